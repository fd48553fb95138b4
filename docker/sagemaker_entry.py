#!/opt/venv/bin/python3
"""SageMaker script mode for the project image: the `train` and `serve` programs.

A small stand-in for the SageMaker training toolkit (`sagemaker-training`), which is a source-only
package with a C extension (it needs a compiler and Python headers in the image) and pulls in gevent,
paramiko and cryptography that these jobs never use. This file does what the toolkit does for a
single-process script, with the standard library only:

train (SageMaker starts the container as `docker run IMAGE train`)
    1. reads /opt/ml/input/config/{hyperparameters,inputdataconfig,resourceconfig}.json; each
       hyperparameter value is JSON-decoded when it can be (the SDK JSON-encodes them);
    2. finds the code: hyperparameter `sagemaker_submit_directory` (an s3:// URI of sourcedir.tar.gz,
       a file:// URI, a local directory or a local tarball; default /opt/ml/code) and the program:
       env SAGEMAKER_PROGRAM, else hyperparameter `sagemaker_program`;
    3. fetches and extracts the code to /opt/ml/code unless it is already there (SageMaker local
       mode with local_code=True mounts the source dir at /opt/ml/code and passes "/opt/ml/code");
       installs requirements.txt from it when there is one;
    4. exports the SM_* variables (SM_MODEL_DIR, SM_CHANNEL_<NAME>, SM_CHANNELS, SM_HPS, SM_HP_<NAME>,
       SM_OUTPUT_DATA_DIR, SM_INPUT_DIR, SM_CURRENT_HOST, SM_HOSTS, SM_TRAINING_ENV, ...);
    5. runs `python <program> --name value ...` (one pair per hyperparameter not starting with
       sagemaker_, sorted by name) in /opt/ml/code, forwarding SIGTERM/SIGINT;
    6. on failure writes the reason to /opt/ml/output/failure (SageMaker's FailureReason) and exits
       non-zero (the program's exit code); on success writes /opt/ml/output/success.

serve (`docker run IMAGE serve`)
    runs, in its own directory, the first of: /opt/ml/code/serve.py; the program named by env
    SAGEMAKER_PROGRAM inside env SAGEMAKER_SUBMIT_DIRECTORY (a directory, used in place, or a
    file:// or s3:// URI of sourcedir.tar.gz, extracted to /opt/ml/code); /opt/ml/model/code/serve.py
    (a model.tar.gz that carries its code). With none of them it exits 2 with a message saying so.
    The project's server, serve.py (train.py copies it into model.tar.gz), is given `--model-dir /opt/ml/model
    --host 0.0.0.0` wherever it comes from (its own default host is loopback); `serve`'s arguments follow.

Outside a container, env SAGEMAKER_BASE_DIR replaces /opt/ml (as with the toolkit); tests use it.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import traceback
from pathlib import Path
from urllib.parse import urlparse

BASE = Path(os.environ.get("SAGEMAKER_BASE_DIR", "/opt/ml"))
CODE_DIR = BASE / "code"
MODEL_CODE_DIR = BASE / "model" / "code"
INPUT_DIR = BASE / "input"
CONFIG_DIR = INPUT_DIR / "config"
DATA_DIR = INPUT_DIR / "data"
MODEL_DIR = BASE / "model"
OUTPUT_DIR = BASE / "output"
OUTPUT_DATA_DIR = OUTPUT_DIR / "data"
INTERMEDIATE_DIR = OUTPUT_DIR / "intermediate"

SAGEMAKER_PREFIX = "sagemaker_"
PROGRAM_PARAM = "sagemaker_program"
SUBMIT_DIR_PARAM = "sagemaker_submit_directory"
# hyperparameters that are not the program's, though they do not start with sagemaker_
RESERVED = {"_tuning_objective_metric", "default_user_module_name"}
STANDARD_SAGEMAKER_HPS = {
    PROGRAM_PARAM,
    SUBMIT_DIR_PARAM,
    "sagemaker_enable_cloudwatch_metrics",
    "sagemaker_region",
    "sagemaker_container_log_level",
    "sagemaker_job_name",
    "sagemaker_s3_output",
    *RESERVED,
}
SERVER = "serve.py"
"""The project's model server (serving/serve.py)."""
FAILURE_LIMIT = 1024 * 16  # SageMaker shows the first 1024 characters as FailureReason
STDERR_TAIL_LINES = 40


class EntryError(Exception):
    """A problem with the job's configuration or code, reported as the job's failure reason."""


def log(message: str) -> None:
    print(f"[sagemaker-entry] {message}", file=sys.stderr, flush=True)


def read_json(path: Path, default=None):
    if not path.exists():
        if default is not None:
            return default
        raise EntryError(f"{path} not found: is this container running as a SageMaker training job?")
    try:
        return json.loads(path.read_text() or "{}")
    except json.JSONDecodeError as error:
        raise EntryError(f"{path} is not valid JSON: {error}") from None


def decode(value):
    """A hyperparameter as the toolkit reads it: JSON when it parses, else the string itself."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value


def arg_value(value) -> str:
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in sorted(value.items()))
    return str(value)


def to_cmd_args(hyperparameters: dict) -> list[str]:
    args: list[str] = []
    for name in sorted(hyperparameters):
        args += [f"--{name}" if len(name) > 1 else f"-{name}", arg_value(hyperparameters[name])]
    return args


def env_value(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, separators=(",", ":"))


# ---------------------------------------------------------------------------------------- code


def _s3_client():
    import boto3  # in the image's venv; imported late so a local-path job never needs it

    endpoint = os.environ.get("S3_ENDPOINT_URL")  # the toolkit's variable; AWS_ENDPOINT_URL_S3 boto3 reads itself
    region = os.environ.get("AWS_REGION") or os.environ.get("SAGEMAKER_REGION") or None
    return boto3.client("s3", region_name=region, endpoint_url=endpoint or None)


def _extract(archive: Path, target: Path) -> None:
    with tarfile.open(archive) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(target, filter="data")
            return
        root = target.resolve()
        for member in tar.getmembers():
            dest = (target / member.name).resolve()
            if (dest != root and root not in dest.parents) or member.issym() or member.islnk() or member.isdev():
                raise EntryError(f"{archive}: refusing to extract unsafe member {member.name!r}")
        tar.extractall(target)


def fetch_code(uri: str, target: Path) -> None:
    """Put the job's code in `target`, from an s3:// tarball, a file:// URI, a directory or a tarball."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        uri = parsed.netloc + parsed.path
    elif parsed.scheme == "s3":
        if target.is_dir() and any(target.iterdir()):
            log(f"{target} is not empty; using the code there instead of {uri}")
            return
        target.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            archive = Path(tmp) / "sourcedir.tar.gz"
            log(f"downloading {uri}")
            try:
                _s3_client().download_file(parsed.netloc, parsed.path.lstrip("/"), str(archive))
            except Exception as error:  # botocore's errors: no credentials, no such key, no endpoint
                raise EntryError(f"cannot download the code from {uri}: {error}") from None
            _extract(archive, target)
        return
    elif parsed.scheme:
        raise EntryError(
            f"{SUBMIT_DIR_PARAM}={uri!r}: unsupported scheme {parsed.scheme}:// (s3://, file:// or a path)"
        )
    source = Path(uri)
    if not source.exists():
        raise EntryError(f"{SUBMIT_DIR_PARAM}={uri!r}: no such file or directory in the container")
    if source.is_dir():
        if source.resolve() == target.resolve():
            return
        target.mkdir(parents=True, exist_ok=True)
        shutil.copytree(source, target, dirs_exist_ok=True)
    elif tarfile.is_tarfile(source):
        target.mkdir(parents=True, exist_ok=True)
        _extract(source, target)
    else:
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)


def install_requirements(code_dir: Path) -> None:
    requirements = code_dir / "requirements.txt"
    if requirements.is_file():
        log(f"installing {requirements}")
        done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-cache-dir", "-r", str(requirements)])
        if done.returncode:
            raise EntryError(f"pip install -r {requirements} failed with exit code {done.returncode}")


def program_command(code_dir: Path, program: str, args: list[str]) -> list[str]:
    path = code_dir / program
    if program.endswith(".py"):
        if not path.is_file():
            found = sorted(p.name for p in code_dir.iterdir()) if code_dir.is_dir() else []
            raise EntryError(f"the program {program} is not in {code_dir} (found: {', '.join(found) or 'nothing'})")
        return [sys.executable, str(path), *args]
    if path.is_file():
        if program.endswith(".sh") or not os.access(path, os.X_OK):
            return ["/bin/sh", str(path), *args]
        return [str(path), *args]
    if (code_dir / program.replace(".", "/")).is_dir() or (code_dir / f"{program}.py").is_file():
        return [sys.executable, "-m", program, *args]  # a module or package name, as the toolkit allows
    raise EntryError(f"the program {program} is not in {code_dir}")


def num_gpus() -> int:
    try:
        return len([d for d in os.listdir("/dev") if d.startswith("nvidia") and d[6:].isdigit()])
    except OSError:
        return 0


def python_path(code_dir: Path) -> str:
    existing = os.environ.get("PYTHONPATH")
    return f"{code_dir}{os.pathsep}{existing}" if existing else str(code_dir)


# ---------------------------------------------------------------------------------------- run


def run(command: list[str], env: dict, cwd: Path) -> tuple[int, list[str]]:
    """Run the program; stdout goes straight through, stderr through a tee that keeps its tail."""
    process = subprocess.Popen(command, env=env, cwd=cwd, stderr=subprocess.PIPE)
    tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)

    def forward(signum, _frame):
        if process.poll() is None:
            process.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, forward)

    def pump():
        for raw in iter(process.stderr.readline, b""):
            sys.stderr.buffer.write(raw)
            sys.stderr.buffer.flush()
            tail.append(raw.decode("utf-8", "replace").rstrip("\n"))

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    code = process.wait()
    thread.join(timeout=10)
    return code, list(tail)


def write_failure(message: str) -> None:
    try:
        OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
        (OUTPUT_DIR / "failure").write_text(message[-FAILURE_LIMIT:])
    except OSError as error:
        log(f"cannot write {OUTPUT_DIR / 'failure'}: {error}")


def training_env() -> tuple[list[str], dict, Path]:
    hyperparameters = {k: decode(v) for k, v in read_json(CONFIG_DIR / "hyperparameters.json").items()}
    input_config = read_json(CONFIG_DIR / "inputdataconfig.json", default={})
    resource = read_json(CONFIG_DIR / "resourceconfig.json", default={"current_host": "algo-1", "hosts": ["algo-1"]})
    sagemaker_hps = {k: v for k, v in hyperparameters.items() if k.startswith(SAGEMAKER_PREFIX) or k in RESERVED}
    user_hps = {k: v for k, v in hyperparameters.items() if k not in sagemaker_hps}

    program = os.environ.get("SAGEMAKER_PROGRAM") or sagemaker_hps.get(PROGRAM_PARAM)
    if not program:
        raise EntryError(
            f"no program to run: set the hyperparameter {PROGRAM_PARAM} (the SDK does for an Estimator "
            "with entry_point=...) or the environment variable SAGEMAKER_PROGRAM"
        )
    submit = str(sagemaker_hps.get(SUBMIT_DIR_PARAM) or os.environ.get("SAGEMAKER_SUBMIT_DIRECTORY") or CODE_DIR)
    fetch_code(submit, CODE_DIR)
    install_requirements(CODE_DIR)

    channels = {name: str(DATA_DIR / name) for name in input_config}
    for path in (MODEL_DIR, OUTPUT_DATA_DIR):
        path.mkdir(parents=True, exist_ok=True)
    args = to_cmd_args(user_hps)
    current_host = resource.get("current_host", "algo-1")
    region = sagemaker_hps.get("sagemaker_region") or os.environ.get("AWS_REGION", "")
    env_map = {
        "hosts": resource.get("hosts", [current_host]),
        "current_host": current_host,
        "current_instance_type": resource.get("current_instance_type", "local"),
        "network_interface_name": resource.get("network_interface_name", "eth0"),
        "hps": user_hps,
        "user_entry_point": program,
        "module_name": Path(program).stem,
        "module_dir": submit,
        "framework_params": {k: v for k, v in sagemaker_hps.items() if k not in STANDARD_SAGEMAKER_HPS},
        "resource_config": resource,
        "input_data_config": input_config,
        "channels": sorted(channels),
        "input_dir": str(INPUT_DIR),
        "input_config_dir": str(CONFIG_DIR),
        "output_dir": str(OUTPUT_DIR),
        "output_data_dir": str(OUTPUT_DATA_DIR),
        "output_intermediate_dir": str(INTERMEDIATE_DIR),
        "model_dir": str(MODEL_DIR),
        "num_cpus": os.cpu_count() or 1,
        "num_gpus": num_gpus(),
        "log_level": sagemaker_hps.get("sagemaker_container_log_level", 20),
        "user_args": args,
    }
    env_map["training_env"] = dict(env_map, job_name=sagemaker_hps.get("sagemaker_job_name", ""))
    env = dict(os.environ)
    env.update({f"SM_{k.upper()}": env_value(v) for k, v in env_map.items()})
    env.update({f"SM_CHANNEL_{name.upper()}": path for name, path in channels.items()})
    env.update({f"SM_HP_{name.upper()}": env_value(value) for name, value in user_hps.items()})
    env.update(
        {
            "SAGEMAKER_JOB_NAME": str(sagemaker_hps.get("sagemaker_job_name", "")),
            "SAGEMAKER_REGION": str(region),
            "CURRENT_HOST": current_host,
            "PYTHONPATH": python_path(CODE_DIR),
        }
    )
    if sagemaker_hps.get("sagemaker_s3_output"):
        log("sagemaker_s3_output is set, but this image does not sync /opt/ml/output/intermediate to S3")
    return program_command(CODE_DIR, program, args), env, CODE_DIR


def train() -> int:
    try:
        command, env, cwd = training_env()
    except EntryError as error:
        message = f"ClientError: {error}"
        log(message)
        write_failure(message)
        return 1
    except Exception:  # a bug here, not in the user's program: still a failure SageMaker can show
        message = f"Entry point error:\n{traceback.format_exc()}"
        log(message)
        write_failure(message)
        return 1
    log(f"running: {' '.join(command)} (in {cwd})")
    code, tail = run(command, env, cwd)
    if code == 0:
        try:
            (OUTPUT_DIR / "success").touch()
        except OSError:
            pass
        log("training succeeded")
        return 0
    reason = f"signal {-code}" if code < 0 else f"exit code {code}"
    message = 'ExecuteUserScriptError:\n{}\nCommand "{}"\n{}'.format(reason, " ".join(command), "\n".join(tail))
    log(f"training failed: {reason}")
    write_failure(message)
    return code if 0 < code < 256 else 1


def serving_code() -> tuple[Path, str]:
    """Where the serving program is: (its directory, its name)."""
    if (CODE_DIR / SERVER).is_file():
        return CODE_DIR, SERVER
    program = os.environ.get("SAGEMAKER_PROGRAM")
    if program:
        submit = os.environ.get("SAGEMAKER_SUBMIT_DIRECTORY")
        if not submit:
            return CODE_DIR, program
        parsed = urlparse(submit)
        local = Path(parsed.netloc + parsed.path) if parsed.scheme == "file" else Path(submit)
        if not parsed.scheme or parsed.scheme == "file":
            if local.is_dir():
                return local, program  # e.g. /opt/ml/model/code, where the SDK repacks a model's code
        fetch_code(submit, CODE_DIR)  # an s3:// or local sourcedir.tar.gz
        return CODE_DIR, program
    if (MODEL_CODE_DIR / SERVER).is_file():
        return MODEL_CODE_DIR, SERVER
    raise EntryError(
        f"no serving code: neither {CODE_DIR / 'serve.py'} nor {MODEL_CODE_DIR / 'serve.py'} exists and "
        "SAGEMAKER_PROGRAM is not set. Put serve.py in /opt/ml/code (mounted) or in the model's code/ "
        "directory (model.tar.gz), or set SAGEMAKER_PROGRAM (and SAGEMAKER_SUBMIT_DIRECTORY: a directory, "
        "file:// or s3:// URI of sourcedir.tar.gz)."
    )


def serve() -> int:
    try:
        code_dir, program = serving_code()
        args = sys.argv[1:]
        if program == SERVER:  # SageMaker's contract: the model in /opt/ml/model, requests on every interface
            args = ["--model-dir", str(MODEL_DIR), "--host", "0.0.0.0", *args]
        command = program_command(code_dir, program, args)
    except EntryError as error:
        log(str(error) if str(error).startswith("no serving code") else f"cannot serve: {error}")
        return 2
    env = dict(os.environ, PYTHONPATH=python_path(code_dir))
    log(f"serving: {' '.join(command)} (in {code_dir})")
    os.chdir(code_dir)
    os.execvpe(command[0], command, env)
    return 127  # not reached


def main() -> int:
    name = Path(sys.argv[0]).name
    if name not in ("train", "serve"):
        if len(sys.argv) < 2 or sys.argv[1] not in ("train", "serve"):
            print(f"usage: {name} train|serve", file=sys.stderr)
            return 2
        name = sys.argv.pop(1)
    return train() if name == "train" else serve()


if __name__ == "__main__":
    sys.exit(main())
