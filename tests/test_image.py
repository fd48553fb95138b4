"""The project image (docker/): its SageMaker script-mode entry point and its runtime.

Two layers:
- docker/sagemaker_entry.py run bare on this machine, with SAGEMAKER_BASE_DIR standing in for /opt/ml
  (always runs: it needs no Docker);
- the built image (FRAUD_IMAGE_URI, default fraud-detection:latest) run for real with `docker run -v`,
  and once through the SageMaker SDK's local mode; these skip, saying why, when no Docker engine is
  reachable or the image has not been built (`make image`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENTRY = ROOT / "docker" / "sagemaker_entry.py"
REQUIREMENTS = ROOT / "docker" / "requirements.txt"
IMAGE = os.environ.get("FRAUD_IMAGE_URI", "fraud-detection:latest")

DUMMY_PROGRAM = """\
import argparse, json, os, sys
parser = argparse.ArgumentParser()
parser.add_argument("--eta", type=float)
parser.add_argument("--max_depth", type=int)
parser.add_argument("--objective")
args = parser.parse_args()
channel = os.environ["SM_CHANNEL_TRAIN"]
report = {
    "argv": sys.argv[1:],
    "args": vars(args),
    "cwd": os.getcwd(),
    "python": sys.executable,
    "files": sorted(os.listdir(channel)),
    "env": {k: v for k, v in os.environ.items() if k.startswith("SM_") and k != "SM_TRAINING_ENV"},
}
with open(os.path.join(os.environ["SM_MODEL_DIR"], "report.json"), "w") as f:
    json.dump(report, f)
print("validation:auc 0.875")
"""

FAILING_PROGRAM = """\
import sys
print("reading the data")
sys.exit("bad input: column 'fraud' is missing")
"""


def sdk_hyperparameters(program: str = "train.py", submit: str = "/opt/ml/code", **extra) -> dict:
    """hyperparameters.json as the SageMaker SDK writes it for an Estimator with entry_point and
    source_dir: every value JSON-encoded (so strings carry quotes), script-mode keys included."""
    values = {"eta": 0.2, "max_depth": 3, "objective": "binary:logistic", **extra}
    values.update(
        sagemaker_program=program,
        sagemaker_submit_directory=submit,
        sagemaker_container_log_level=20,
        sagemaker_job_name="fraud-train-1",
        sagemaker_region="us-east-1",
    )
    return {key: json.dumps(value) for key, value in values.items()}


def make_opt_ml(root: Path, hyperparameters: dict, code: str | None = DUMMY_PROGRAM) -> Path:
    """A directory laid out as /opt/ml is for a training job with one channel, `train`."""
    config = root / "input" / "config"
    config.mkdir(parents=True)
    (config / "hyperparameters.json").write_text(json.dumps(hyperparameters))
    (config / "inputdataconfig.json").write_text(
        json.dumps({"train": {"TrainingInputMode": "File", "ContentType": "text/csv"}})
    )
    (config / "resourceconfig.json").write_text(
        json.dumps({"current_host": "algo-1", "hosts": ["algo-1"], "network_interface_name": "eth0"})
    )
    channel = root / "input" / "data" / "train"
    channel.mkdir(parents=True)
    (channel / "train.csv").write_text("1,0.5,3\n0,0.1,2\n")
    (root / "model").mkdir()
    (root / "output").mkdir()
    if code is not None:
        (root / "code").mkdir()
        (root / "code" / "train.py").write_text(code)
    return root


# ------------------------------------------------------------------- the entry point, bare


def run_entry(base: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {
        k: v for k, v in os.environ.items() if not k.startswith(("SM_", "SAGEMAKER_PROGRAM", "SAGEMAKER_SUBMIT"))
    }
    environment.update(SAGEMAKER_BASE_DIR=str(base), PYTHONDONTWRITEBYTECODE="1", **(env or {}))
    return subprocess.run(
        [sys.executable, str(ENTRY), *args], env=environment, capture_output=True, text=True, timeout=120
    )


def test_train_runs_the_program_with_hyperparameters_as_arguments_and_sm_variables(tmp_path):
    base = make_opt_ml(tmp_path / "ml", sdk_hyperparameters(submit=str(tmp_path / "ml" / "code")))
    done = run_entry(base, "train")
    assert done.returncode == 0, done.stderr
    assert "validation:auc 0.875" in done.stdout
    report = json.loads((base / "model" / "report.json").read_text())
    # sorted, --name value, JSON-decoded: no quotes around strings; sagemaker_* are not passed
    assert report["argv"] == ["--eta", "0.2", "--max_depth", "3", "--objective", "binary:logistic"]
    env = report["env"]
    assert env["SM_MODEL_DIR"] == str(base / "model")
    assert env["SM_CHANNEL_TRAIN"] == str(base / "input" / "data" / "train")
    assert json.loads(env["SM_CHANNELS"]) == ["train"]
    assert json.loads(env["SM_HPS"]) == {"eta": 0.2, "max_depth": 3, "objective": "binary:logistic"}
    assert env["SM_HP_OBJECTIVE"] == "binary:logistic"
    assert env["SM_OUTPUT_DATA_DIR"] == str(base / "output" / "data")
    assert env["SM_CURRENT_HOST"] == "algo-1"
    assert env["SM_USER_ENTRY_POINT"] == "train.py"
    assert report["files"] == ["train.csv"]
    assert report["cwd"] == str(base / "code")
    assert (base / "output" / "success").exists()
    assert not (base / "output" / "failure").exists()


def test_train_extracts_a_sourcedir_tarball(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    (source / "train.py").write_text(DUMMY_PROGRAM)
    archive = tmp_path / "sourcedir.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source / "train.py", arcname="train.py")
    base = make_opt_ml(tmp_path / "ml", sdk_hyperparameters(submit=f"file://{archive}"), code=None)
    done = run_entry(base, "train")
    assert done.returncode == 0, done.stderr
    assert (base / "code" / "train.py").is_file()
    assert (base / "model" / "report.json").is_file()


def test_train_reports_a_failing_program_in_the_failure_file(tmp_path):
    base = make_opt_ml(tmp_path / "ml", sdk_hyperparameters(submit=str(tmp_path / "ml" / "code")), FAILING_PROGRAM)
    done = run_entry(base, "train")
    assert done.returncode == 1
    failure = (base / "output" / "failure").read_text()
    assert "ExecuteUserScriptError" in failure
    assert "bad input: column 'fraud' is missing" in failure
    assert "bad input" in done.stderr  # the program's stderr still reaches the job's log
    assert not (base / "output" / "success").exists()


def test_train_without_a_program_fails_with_a_reason(tmp_path):
    hyperparameters = {k: v for k, v in sdk_hyperparameters().items() if k != "sagemaker_program"}
    base = make_opt_ml(tmp_path / "ml", hyperparameters)
    done = run_entry(base, "train")
    assert done.returncode == 1
    assert "sagemaker_program" in (base / "output" / "failure").read_text()


def test_train_with_a_missing_submit_directory_fails_with_a_reason(tmp_path):
    base = make_opt_ml(tmp_path / "ml", sdk_hyperparameters(submit="/nowhere/sourcedir.tar.gz"), code=None)
    done = run_entry(base, "train")
    assert done.returncode == 1
    assert "/nowhere/sourcedir.tar.gz" in (base / "output" / "failure").read_text()


def test_serve_without_serving_code_says_so(tmp_path):
    done = run_entry(tmp_path, "serve")
    assert done.returncode == 2
    assert "no serving code" in done.stderr


def test_serve_runs_serve_py_from_the_code_directory(tmp_path):
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "serve.py").write_text("import os\nprint('serving from', os.getcwd())\n")
    done = run_entry(tmp_path, "serve")
    assert done.returncode == 0, done.stderr
    assert f"serving from {tmp_path / 'code'}" in done.stdout


def test_serve_runs_sagemaker_program_from_the_submit_directory(tmp_path):
    model_code = tmp_path / "model" / "code"
    model_code.mkdir(parents=True)
    (model_code / "inference.py").write_text("print('inference server')\n")
    done = run_entry(
        tmp_path, "serve", env={"SAGEMAKER_PROGRAM": "inference.py", "SAGEMAKER_SUBMIT_DIRECTORY": str(model_code)}
    )
    assert done.returncode == 0, done.stderr
    assert "inference server" in done.stdout


def test_serve_falls_back_to_the_code_inside_the_model(tmp_path):
    model_code = tmp_path / "model" / "code"
    model_code.mkdir(parents=True)
    (model_code / "serve.py").write_text("import os\nprint('model server in', os.getcwd())\n")
    done = run_entry(tmp_path, "serve")
    assert done.returncode == 0, done.stderr
    assert f"model server in {model_code}" in done.stdout


ARGV_SERVER = "import json, sys\nprint(json.dumps(sys.argv[1:]))\n"


@pytest.mark.parametrize("where", ["code", "submit-directory", "model"])
def test_serve_gives_the_project_server_the_model_and_all_interfaces_whichever_its_path(tmp_path, where):
    """SageMaker sends requests to port 8080 of the container, so serve.py binds 0.0.0.0 there (its own default is
    127.0.0.1), whether it comes from /opt/ml/code, SAGEMAKER_SUBMIT_DIRECTORY or the model's code/."""
    directory = {"code": "code", "submit-directory": "source", "model": "model/code"}[where]
    (tmp_path / directory).mkdir(parents=True)
    (tmp_path / directory / "serve.py").write_text(ARGV_SERVER)
    env = {"SAGEMAKER_PROGRAM": "serve.py", "SAGEMAKER_SUBMIT_DIRECTORY": str(tmp_path / directory)}
    done = run_entry(tmp_path, "serve", "--workers", "2", env=env if where == "submit-directory" else None)
    assert done.returncode == 0, done.stderr
    argv = json.loads(done.stdout)
    assert argv == ["--model-dir", str(tmp_path / "model"), "--host", "0.0.0.0", "--workers", "2"]


def test_requirements_pin_exact_versions_within_the_project_ranges():
    """docker/requirements.txt pins every package exactly, and each pin is allowed by setup.cfg's
    install_requires, so the image runs what the project declares (the SDK stays out of the image)."""
    import configparser

    from packaging.requirements import Requirement

    lines = [line.split("#")[0].strip() for line in REQUIREMENTS.read_text().splitlines()]
    pins = {}
    for line in filter(None, lines):
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)==(\S+)", line)
        assert match, f"docker/requirements.txt: not an exact pin: {line!r}"
        pins[match[1].lower()] = match[2]
    assert {"pandas", "numpy", "scikit-learn", "xgboost-cpu", "matplotlib", "pyarrow", "boto3", "smclarify"} <= set(
        pins
    )
    assert "sagemaker" not in pins
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    declared = [Requirement(r) for r in setup["options"]["install_requires"].split("\n") if r.strip()]
    outside = {
        req.name: (pins[req.name.lower()], str(req.specifier))
        for req in declared
        if req.name.lower() in pins and not req.specifier.contains(pins[req.name.lower()], prereleases=True)
    }
    assert not outside, f"pins outside setup.cfg's ranges (pin, range): {outside}"


# ------------------------------------------------------------------- building the image, without building it

BASE_SCRIPT = ROOT / "docker" / "build_base_image.sh"


def run_base_script(
    *args: str, sources: Path, env: dict | None = None, fakes: Path | None = None
) -> subprocess.CompletedProcess:
    """docker/build_base_image.sh with APT_SOURCES_DIR=sources, DEBIAN_MIRROR only when env sets it,
    and the commands in `fakes` first on PATH."""
    environment = {k: v for k, v in os.environ.items() if k not in ("DEBIAN_MIRROR", "BASE_IMAGE_NAME")}
    environment.update(APT_SOURCES_DIR=str(sources), **(env or {}))
    if fakes is not None:
        environment["PATH"] = f"{fakes}{os.pathsep}{environment['PATH']}"
    command = ["bash", str(BASE_SCRIPT), *args]
    return subprocess.run(command, env=environment, capture_output=True, text=True, timeout=60)


def error_line(done: subprocess.CompletedProcess) -> str:
    lines = done.stderr.strip().splitlines()
    assert lines, f"no error message (rc {done.returncode})"
    return lines[-1]


def test_base_script_names_no_mirror_host():
    text = BASE_SCRIPT.read_text()
    assert "debian.org" not in text
    assert not re.findall(r"\w+://\w", text), "a literal URL in build_base_image.sh"


def test_base_script_takes_the_mirror_from_one_line_sources(tmp_path):
    (tmp_path / "sources.list.d").mkdir(parents=True)
    (tmp_path / "sources.list").write_text(
        "# deb http://commented.example/debian bookworm main\n"
        "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://security.example/debian-security"
        " bookworm-security main\n"
        "deb [arch=amd64] http://mirror.example/pub/debian/ bookworm main contrib\n"
    )
    (tmp_path / "sources.list.d" / "vendor.list").write_text("deb https://vendor.example/apt stable main\n")
    done = run_base_script("--print-mirror", sources=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "http://mirror.example/pub/debian"


def test_base_script_takes_the_mirror_from_deb822_sources(tmp_path):
    (tmp_path / "sources.list.d").mkdir(parents=True)
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: https://security.example/debian-security\nSuites: bookworm-security\nComponents: main\n\n"
        "Types: deb\n# http://commented.example/debian\nURIs: https://mirror.example/debian\n"
        "Suites: bookworm bookworm-updates\nComponents: main\n"
    )
    done = run_base_script("--print-mirror", sources=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "https://mirror.example/debian"


def test_base_script_mirror_option_overrides_variable_overrides_sources(tmp_path):
    (tmp_path / "sources.list").write_text("deb http://host.example/debian bookworm main\n")
    from_variable = run_base_script(
        "--print-mirror", sources=tmp_path, env={"DEBIAN_MIRROR": "http://var.example/debian"}
    )
    assert from_variable.stdout.strip() == "http://var.example/debian", from_variable.stderr
    from_option = run_base_script(
        "--print-mirror", "--mirror", "http://opt.example/debian/", sources=tmp_path, env={"DEBIAN_MIRROR": "x"}
    )
    assert from_option.stdout.strip() == "http://opt.example/debian", from_option.stderr


@pytest.mark.parametrize(
    "sources", [{}, {"sources.list": "deb http://archive.example/ubuntu jammy main\n"}], ids=["none", "not-debian"]
)
def test_base_script_without_a_mirror_fails_saying_how_to_give_one(tmp_path, sources):
    for name, text in sources.items():
        (tmp_path / name).write_text(text)
    done = run_base_script("--print-mirror", sources=tmp_path)
    assert done.returncode != 0
    assert done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "pass --mirror URL or set DEBIAN_MIRROR" in error_line(done)


def test_base_script_refuses_a_mirror_that_is_not_a_url(tmp_path):
    done = run_base_script("--print-mirror", "--mirror", "mirror.example/debian", sources=tmp_path)
    assert done.returncode != 0
    assert "mirror.example/debian" in error_line(done)


def fake_build_host(root: Path, machine: str) -> Path:
    """Commands standing in for a root build host of the given `uname -m`, with a Docker engine that has
    no images, and a debootstrap that records its arguments in debootstrap.args and fails."""
    fakes = root / "bin"
    fakes.mkdir()
    scripts = {
        "docker": 'case "$1" in info) exit 0 ;; *) exit 1 ;; esac',
        "id": "echo 0",
        "uname": f"echo {machine}",
        "debootstrap": f'echo "$@" > {root / "debootstrap.args"}; exit 1',
    }
    for name, body in scripts.items():
        (fakes / name).write_text(f"#!/bin/sh\n{body}\n")
        (fakes / name).chmod(0o755)
    return fakes


MIRROR_ARGS = ("--mirror", "http://mirror.example/debian")


def test_base_script_debootstraps_amd64_on_an_amd64_host(tmp_path):
    fakes = fake_build_host(tmp_path, "x86_64")
    done = run_base_script("--name", "fraud-test-base:amd64", *MIRROR_ARGS, sources=tmp_path, fakes=fakes)
    assert "debootstrap failed" in error_line(done)
    args = (tmp_path / "debootstrap.args").read_text().split()
    assert "--arch=amd64" in args
    assert "--foreign" not in args
    assert args[-1] == "http://mirror.example/debian"


def test_base_script_debootstraps_amd64_foreign_on_an_arm64_host_with_qemu(tmp_path):
    fakes = fake_build_host(tmp_path, "aarch64")
    binfmt = tmp_path / "binfmt_misc"
    binfmt.mkdir()
    (binfmt / "qemu-x86_64").write_text(
        "enabled\ninterpreter /usr/libexec/qemu-binfmt/x86_64-binfmt-P\nflags: POCF\noffset 0\n"
    )
    done = run_base_script(
        *MIRROR_ARGS, sources=tmp_path, fakes=fakes, env={"BINFMT_MISC": str(binfmt), "BASE_IMAGE_NAME": "t:1"}
    )
    assert "debootstrap failed" in error_line(done)
    args = (tmp_path / "debootstrap.args").read_text().split()
    assert {"--arch=amd64", "--foreign"} <= set(args)


@pytest.mark.parametrize(
    "entry", [None, "enabled\nflags: OC\n", "disabled\nflags: POCF\n"], ids=["none", "no-fix-binary", "disabled"]
)
def test_base_script_on_an_arm64_host_without_qemu_says_what_to_install(tmp_path, entry):
    fakes = fake_build_host(tmp_path, "aarch64")
    binfmt = tmp_path / "binfmt_misc"
    binfmt.mkdir()
    if entry is not None:
        (binfmt / "qemu-x86_64").write_text(entry)
    done = run_base_script(*MIRROR_ARGS, sources=tmp_path, fakes=fakes, env={"BINFMT_MISC": str(binfmt)})
    assert done.returncode != 0
    assert not (tmp_path / "debootstrap.args").exists(), "it must not build the host's architecture instead"
    assert "apt-get install -y qemu-user-static binfmt-support" in error_line(done)


def test_base_script_refuses_an_unknown_platform(tmp_path):
    done = run_base_script("--platform", "linux/s390x", *MIRROR_ARGS, sources=tmp_path)
    assert done.returncode != 0
    assert "linux/s390x" in error_line(done)


def make_dry_run(*variables: str) -> str:
    done = subprocess.run(
        ["make", "-n", "-C", str(ROOT), "image", *variables], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def command_line(output: str, start: str) -> list[str]:
    lines = [line.split() for line in output.splitlines() if line.startswith(start)]
    assert len(lines) == 1, output
    return lines[0]


def test_make_image_builds_for_linux_amd64_by_default():
    output = make_dry_run()
    base = command_line(output, "bash docker/build_base_image.sh")
    assert base[base.index("--platform") + 1] == "linux/amd64"
    build = command_line(output, "docker build")
    assert build[build.index("--platform") + 1] == "linux/amd64"


def test_make_image_passes_platform_to_both_builds():
    output = make_dry_run("PLATFORM=linux/arm64")
    for start in ("bash docker/build_base_image.sh", "docker build"):
        line = command_line(output, start)
        assert line[line.index("--platform") + 1] == "linux/arm64"
    registry_base = make_dry_run("BASE_IMAGE=python:3.11-slim")
    assert "build_base_image.sh" not in registry_base
    build = command_line(registry_base, "docker build")
    assert build[build.index("--platform") + 1] == "linux/amd64"


# ------------------------------------------------------------------- the built image


def docker_unavailable() -> str | None:
    if shutil.which("docker") is None:
        return "no docker client on PATH (docker/ensure_engine.sh installs one)"
    try:
        info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "'docker info' did not answer in 30 s"
    if info.returncode != 0:
        lines = (info.stderr or info.stdout).strip().splitlines()
        return f"no Docker engine reachable ('docker info': {lines[-1] if lines else 'failed'})"
    image = subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True, text=True, timeout=30)
    if image.returncode != 0:
        return f"the image {IMAGE} is not built (make image)"
    return None


@pytest.fixture(scope="module")
def image():
    reason = docker_unavailable()
    if reason:
        pytest.skip(reason)
    return IMAGE


def docker_command(
    image: str, *args: str, volumes: dict | None = None, env: dict | None = None, options: tuple[str, ...] = ()
) -> list[str]:
    """`docker run --rm` with the mounts, the environment and any other `options`."""
    command = ["docker", "run", "--rm", *options]
    if os.getuid() != 0:  # files written to the mounts stay removable by this user
        command += ["--user", f"{os.getuid()}:{os.getgid()}"]
    for host, container in (volumes or {}).items():
        command += ["-v", f"{host}:{container}"]
    for key, value in (env or {}).items():
        command += ["-e", f"{key}={value}"]
    return [*command, image, *args]


def docker_run(image: str, *args: str, volumes: dict | None = None, env: dict | None = None, timeout: int = 300):
    command = docker_command(image, *args, volumes=volumes, env=env)
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def opt_ml_mounts(base: Path) -> dict:
    return {base / name: f"/opt/ml/{name}" for name in ("input", "model", "output", "code") if (base / name).exists()}


@pytest.mark.docker
def test_image_train_runs_a_mounted_program_on_a_channel(image, tmp_path):
    base = make_opt_ml(tmp_path / "ml", sdk_hyperparameters())
    done = docker_run(image, "train", volumes=opt_ml_mounts(base))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "validation:auc 0.875" in done.stdout
    report = json.loads((base / "model" / "report.json").read_text())
    assert report["argv"] == ["--eta", "0.2", "--max_depth", "3", "--objective", "binary:logistic"]
    assert report["python"].startswith("/opt/venv/bin/python")
    assert report["cwd"] == "/opt/ml/code"
    assert report["files"] == ["train.csv"]
    assert report["env"]["SM_CHANNEL_TRAIN"] == "/opt/ml/input/data/train"
    assert report["env"]["SM_MODEL_DIR"] == "/opt/ml/model"
    assert not list((base / "code").glob("__pycache__")), "the image must not write bytecode into mounted code"


@pytest.mark.docker
def test_image_is_built_for_linux_amd64(image):
    """SageMaker's ml.m5 and ml.c5 instances are x86_64: the image (and the offline base it was made
    from, when there is one) must be linux/amd64 whatever the build host is."""
    images = [image]
    base = os.environ.get("BASE_IMAGE_NAME", "fraud-detection-base:bookworm")
    if subprocess.run(["docker", "image", "inspect", base], capture_output=True).returncode == 0:
        images.append(base)
    for name in images:
        done = subprocess.run(
            ["docker", "image", "inspect", "-f", "{{.Os}}/{{.Architecture}}", name], capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "linux/amd64", name


@pytest.mark.docker
def test_image_train_reports_failure(image, tmp_path):
    base = make_opt_ml(tmp_path / "ml", sdk_hyperparameters(), FAILING_PROGRAM)
    done = docker_run(image, "train", volumes=opt_ml_mounts(base))
    assert done.returncode == 1
    assert "bad input" in (base / "output" / "failure").read_text()


@pytest.mark.docker
def test_image_passes_other_commands_through(image):
    done = docker_run(
        image,
        "python",
        "-c",
        "import json, sys, importlib.metadata as m, xgboost, pandas, sklearn, smclarify, matplotlib, pyarrow, boto3,"
        " flask, gevent, gunicorn;"
        "print(json.dumps({'python': sys.executable, 'version': list(sys.version_info[:2]),"
        " 'pins': {n: m.version(n) for n in ('pandas', 'numpy', 'scikit-learn', 'xgboost-cpu', 'smclarify')}}))",
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["python"].startswith("/opt/venv/bin/python")
    assert found["version"] == [3, 11]
    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)$", REQUIREMENTS.read_text(), re.M))
    assert found["pins"] == {name: pins[name] for name in found["pins"]}
    shell = docker_run(image, "/bin/bash", "-c", "command -v python3; echo $PYTHONUNBUFFERED$PYTHONDONTWRITEBYTECODE")
    assert shell.stdout.split() == ["/opt/venv/bin/python3", "11"]


@pytest.mark.docker
def test_image_serve_without_code_fails_clearly(image):
    done = docker_run(image, "serve")
    assert done.returncode == 2
    assert "no serving code" in done.stderr


@pytest.mark.docker
def test_image_serves_a_model_on_its_published_port_whatever_slow_clients_do(image, trained, splits, tmp_path):
    """`docker run -p ... IMAGE serve` with serve.py in /opt/ml/code (as local mode mounts code) and a model in
    /opt/ml/model: it answers from outside the container, also while idle and half-sent connections hold on."""
    from harness import call, free_port, stalled_connections, wait_until_ready

    code = tmp_path / "code"
    code.mkdir()
    for script in ("serving/serve.py", "serving/explain.py", "processing/features.py"):
        shutil.copy(ROOT / script, code)
    with open(splits / "headered" / "test.csv") as file:
        row = file.readlines()[1].split(",", 2)[2]  # policy_id, fraud, then the features
    name, address = f"fraud-serve-test-{os.getpid()}", ("127.0.0.1", free_port())
    command = docker_command(
        image,
        "serve",
        volumes={trained[0]: "/opt/ml/model", code: "/opt/ml/code"},
        env={"SAGEMAKER_MODEL_SERVER_WORKERS": 1},
        options=("--name", name, "-p", f"{address[0]}:{address[1]}:8080"),
    )
    server = subprocess.Popen(command)
    try:
        wait_until_ready(server, address, startup_s=120)
        with stalled_connections(address, 2):
            assert call(address, method="GET", path="/ping").status == 200
            reply = call(address, row, "text/csv")
        assert reply.status == 200, reply.text
        assert len(reply.json()["predictions"]) == 1
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)
        server.wait(timeout=60)


@pytest.mark.docker
def test_image_under_sagemaker_local_mode(image, tmp_path, monkeypatch):
    """The SDK's local mode (docker-compose, `train` as the command, local_code mounting the source
    directory at /opt/ml/code) runs a script-mode Estimator in this image."""
    if (
        shutil.which("docker-compose") is None
        and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode
    ):
        pytest.skip("neither docker-compose nor `docker compose` is installed (SageMaker local mode needs one)")
    sdk_config = tmp_path / "sdk.yaml"
    sdk_config.write_text('SchemaVersion: "1.0"\nSageMaker:\n  PythonSDK:\n    Modules:\n      TelemetryOptOut: true\n')
    monkeypatch.setenv("SAGEMAKER_USER_CONFIG_OVERRIDE", str(sdk_config))
    monkeypatch.setenv("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    from sagemaker.estimator import Estimator
    from sagemaker.local import LocalSession

    source = tmp_path / "src"
    source.mkdir()
    (source / "train.py").write_text(DUMMY_PROGRAM)
    channel = tmp_path / "data"
    channel.mkdir()
    (channel / "train.csv").write_text("1,0.5,3\n")
    session = LocalSession()
    session.config = {"local": {"local_code": True, "container_root": str(tmp_path)}}
    estimator = Estimator(
        image_uri=image,
        role="arn:aws:iam::123456789012:role/SageMakerRole",
        instance_count=1,
        instance_type="local",
        entry_point="train.py",
        source_dir=str(source),
        hyperparameters={"eta": 0.3, "max_depth": 4, "objective": "binary:logistic"},
        output_path=f"file://{tmp_path / 'out'}",
        sagemaker_session=session,
    )
    try:
        estimator.fit({"train": f"file://{channel}"}, logs=False)
    finally:  # the SDK leaves its stopped compose containers behind: remove this test's
        for root in tmp_path.glob("tmp*"):
            label = f"label=com.docker.compose.project.working_dir={root}"
            ids = subprocess.run(["docker", "ps", "-aq", "--filter", label], capture_output=True, text=True).stdout
            if ids.split():
                subprocess.run(["docker", "rm", "-f", *ids.split()], capture_output=True)
    with tarfile.open(tmp_path / "out" / "model.tar.gz") as tar:
        report = json.load(tar.extractfile("report.json"))
    assert report["argv"] == ["--eta", "0.3", "--max_depth", "4", "--objective", "binary:logistic"]
    assert report["files"] == ["train.csv"]
