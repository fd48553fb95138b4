"""The fraud-detection pipeline as code: configuration, graph builder and command line."""
