"""What every script shares: fast --help that imports nothing heavy, help on every flag, both flag spellings,
an example in --help, expected errors as one line with an exit status."""

import argparse
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import cli

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = cli.SCRIPTS
HEAVY = ("tensorflow", "keras", "cv2", "torch", "PIL", "pycocotools", "matplotlib", "numpy")
HELP_SECONDS = 1.0  # on an idle machine; under load the bound grows with a bare interpreter's start-up


def test_help_is_fast_and_imports_nothing_heavy():
    """`python SCRIPT --help` in a fresh process: the modules it imports (-X importtime) and its wall time,
    which must stay under 1 s, or 10 bare interpreter start-ups on a loaded machine (TensorFlow alone is
    about 40)."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    timings = {}
    for script in SCRIPTS:
        done = subprocess.run(
            [sys.executable, "-X", "importtime", *cli.script_argv(script), "--help"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert "usage:" in done.stdout and "examples:" in done.stdout and "python " in done.stdout, script
        imported = {line.split("|")[-1].strip().split(".")[0] for line in done.stderr.splitlines() if "|" in line}
        assert not imported & set(HEAVY), f"{script} --help imports {sorted(imported & set(HEAVY))}"
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, *cli.script_argv(script), "--help"], cwd=ROOT, env=env, capture_output=True, check=True
        )
        timings[script] = time.perf_counter() - start
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    bare = time.perf_counter() - start
    print(
        "\n--help wall time (s): " + ", ".join(f"{s} {t:.2f}" for s, t in timings.items()) + f"; bare python {bare:.2f}"
    )
    assert max(timings.values()) < max(HELP_SECONDS, 10 * bare), timings


def test_a_reader_closing_stdout_stops_the_script_quietly():
    """`SCRIPT | head -1`: a reader that closes stdout early ends the script (any: `cli.run`) with status 141
    (128 + SIGPIPE, as shells report) and nothing on stderr; before: `error: 32`, exit 2. A script printing
    a million lines to a reader of one, and `--list` into a pipe closed before it writes."""
    printer = "import sys, cli; sys.exit(cli.run(lambda argv: [print(i) for i in range(10**6)]))"
    process = subprocess.Popen(
        [sys.executable, "-c", printer], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert process.stdout.readline() == "0\n"
    process.stdout.close()  # the reader stops, as `head -1` does
    assert (process.wait(timeout=120), process.stderr.read()) == (cli.EXIT_BROKEN_PIPE, "")
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "tools.convert_detectron2_checkpoint", "--list"],
            cwd=ROOT, stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120,
        )  # fmt: skip
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr) == (cli.EXIT_BROKEN_PIPE, "")


def test_scripts_names_every_script():
    """`cli.SCRIPTS` (what the tests here and bench/help_time.py go through) holds every runnable script of the
    root and tools/ but the two developer tools that need torch and transformers."""
    runnable = {
        path.relative_to(ROOT).as_posix()
        for path in [*ROOT.glob("*.py"), *ROOT.glob("tools/*.py")]
        if 'if __name__ == "__main__":' in path.read_text().splitlines()
    }
    assert set(SCRIPTS) <= runnable
    assert runnable - set(SCRIPTS) == {"tools/make_golden.py", "tools/parity_report.py"}


class _Captured(Exception):
    pass


def _parser_of(script: str, monkeypatch) -> argparse.ArgumentParser:
    """The script's parser, taken at `cli.parse` (nothing after parsing runs)."""
    captured = {}

    def capture(parser, argv=None):
        cli.add_both_spellings(parser)
        captured["parser"] = parser
        raise _Captured

    monkeypatch.setattr(cli, "parse", capture)
    spec = importlib.util.spec_from_file_location(f"cli_test_{Path(script).stem}", ROOT / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(_Captured):
        module.main(["x"])
    return captured["parser"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_flag_has_help_both_spellings_and_the_help_an_example(script, monkeypatch):
    parser = _parser_of(script, monkeypatch)
    assert parser.epilog and "python " in parser.epilog
    for action in parser._actions:
        assert action.help, f"{script}: {action.option_strings or action.dest} has no help text"
        for option in action.option_strings:
            if option.startswith("--"):
                assert "--" + option[2:].replace("_", "-") in action.option_strings, option
                assert "--" + option[2:].replace("-", "_") in action.option_strings, option


@pytest.mark.parametrize(
    "script, argv, dest, value",
    [
        ("test_dataset.py", ["--num-samples", "3"], "num_samples", 3),
        ("test_dataset.py", ["--num_samples", "3"], "num_samples", 3),
        ("convert_coco_to_tfrecord.py", ["--image-dir", "a", "--output-file-prefix", "b"], "image_dir", "a"),
        ("test.py", ["--model", "m", "--images", "i", "--score_threshold", "0.3"], "score_threshold", 0.3),
        ("test.py", ["--model", "m", "--images", "i", "--score-threshold", "0.3"], "score_threshold", 0.3),
        ("test_map.py", ["--predictions", "p", "--gt_dir", "g"], "gt_dir", "g"),
        ("test_map.py", ["--predictions", "p", "--gt-dir", "g"], "gt_dir", "g"),
        ("train.py", ["--allow-config-change"], "allow_config_change", True),
    ],
)
def test_both_spellings_parse_to_the_same_value(script, argv, dest, value, monkeypatch):
    parser = _parser_of(script, monkeypatch)
    assert getattr(parser.parse_args(argv), dest) == value


def test_run_turns_expected_errors_into_one_line_and_a_status(capsys):
    def failing(error):
        def main(argv):
            raise error

        return main

    cases = [
        (failing(ValueError("config field x is wrong\nmore detail")), 2, "error: config field x is wrong"),
        (
            failing(FileNotFoundError(2, "No such file or directory", "/data/a.json")),
            2,
            "error: /data/a.json: No such file or directory",
        ),  # fmt: skip
        (failing(cli.CommandError("no records in x-*", status=1)), 1, "error: no records in x-*"),
        (failing(KeyboardInterrupt()), 130, "interrupted"),
        (failing(SystemExit("error: --gt needs --images")), 2, "error: --gt needs --images"),
    ]
    for main, status, line in cases:
        assert cli.run(main, []) == status
        err = capsys.readouterr().err.strip()
        assert err.splitlines() == [line], err
    assert cli.run(lambda argv: 1, []) == 1 and cli.run(lambda argv: {"AP": 1}, []) == 0
    with pytest.raises(RuntimeError):  # a bug is not an expected error: its traceback is kept
        cli.run(failing(RuntimeError("bug")), [])


def test_tensorflow_errors_are_one_line(capsys):
    import tensorflow as tf

    def main(argv):
        raise tf.errors.DataLossError(None, None, "corrupted record at 12\n  [[{{node IteratorGetNext}}]]")

    assert cli.run(main, []) == 2
    assert capsys.readouterr().err.strip() == "error: corrupted record at 12"


def test_verbose_brings_back_tensorflow_logs(monkeypatch):
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    cli.quiet_tensorflow(verbose=False)
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "3"
    cli.quiet_tensorflow(verbose=True)
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"
    cli.quiet_tensorflow(verbose=False)


def test_a_real_failure_after_running_tensorflow_is_exactly_one_line(tmp_path):
    """Empty shards read by TensorFlow: no start-up lines (CUDA probing, absl, cpu_feature_guard), no
    traceback; one line naming the pattern, exit 2, nothing written."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    for i in range(2):
        (tmp_path / f"train-{i:05d}-of-00002.tfrecord").write_bytes(b"")
    (tmp_path / "categories.json").write_text('{"categories": [{"id": 1, "name": "thing"}]}')
    pattern = str(tmp_path / "train-*.tfrecord")
    argv = ["--raw", "--set", f"data.train_files={pattern}", "model.num_classes=1", "--output_dir", str(tmp_path / "o")]
    done = subprocess.run([sys.executable, "test_dataset.py", *argv], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    assert done.stdout == "" and done.stderr.strip().splitlines() == [done.stderr.strip()], done.stderr
    assert done.stderr.startswith(f"error: data.train_files {pattern} holds no usable records"), done.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.slow  # its fast twin: test_a_real_failure_after_running_tensorflow_is_exactly_one_line
def test_every_scripts_real_command_line_fails_in_exactly_one_line(tmp_path):
    """The scripts whose other tests call main() in-process, each run as a user runs it (fresh processes, side
    by side), with bad input found after TensorFlow was imported: no start-up lines, no traceback, one line
    and the exit status. test.py, test_dataset.py and the converters have their own."""
    import tensorflow as tf

    from data.categories import Categories
    from tests.helpers import tiny_config

    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    run = tmp_path / "run"  # a run folder with a checkpoint, refused by --no-resume
    tf.train.CheckpointManager(tf.train.Checkpoint(step=tf.Variable(3, tf.int64)), str(run / "checkpoints"), 1).save()
    config = tiny_config(num_classes=4)
    config.train.output_dir, config.data.train_files = str(run), str(tmp_path / "train-*.tfrecord")
    config.save(str(tmp_path / "config.json"))
    Categories.from_coco([{"id": k, "name": f"c{k}"} for k in range(4)]).save(str(tmp_path / "categories.json"))
    (tmp_path / "task" / "images").mkdir(parents=True)
    (tmp_path / "task" / "images" / "a.png").write_bytes(b"")  # the folder passes prelabel.py's checks
    model = ["--weights", str(tmp_path / "none.weights.h5"), "--config", str(tmp_path / "config.json")]
    cases = {
        "train.py": (
            ["--config", str(tmp_path / "config.json"), "--no-resume"],
            2,
            "error: ",
            "already holds checkpoints",
        ),
        "test_map.py": (
            [*model, "--tfrecords", str(tmp_path / "val-*")],
            2,
            "error: ",
            "none.weights.h5 does not exist",
        ),
        "prelabel.py": (
            [*model, "--categories", str(tmp_path / "categories.json"), "--folder", str(tmp_path / "task")],
            2,
            "error: ",
            "none.weights.h5 does not exist",
        ),
        "tools/export.py": (
            [*model, str(tmp_path / "out" / "m2f"), "--format", "saved_model"],
            2,
            "error: ",
            "none.weights.h5 does not exist",
        ),
        "convert_coco_to_tfrecord.py": (
            [
                "--image_dir",
                str(tmp_path / "nope"),
                "--object_annotations_file",
                str(tmp_path / "config.json"),
                "--output_file_prefix",
                str(tmp_path / "out" / "train"),
            ],
            1,
            "error: ",
            f"--image_dir {tmp_path / 'nope'} does not exist",
        ),  # fmt: skip
    }
    processes = {
        script: subprocess.Popen(
            [sys.executable, *cli.script_argv(script), *argv],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for script, (argv, *_) in cases.items()
    }
    for script, (_, status, prefix, message) in cases.items():
        out, err = processes[script].communicate(timeout=600)
        assert processes[script].returncode == status, (script, err[-3000:])
        lines = err.strip().splitlines()
        assert lines[-1].startswith(prefix) and message in lines[-1] and "Traceback" not in err, (script, err[-3000:])
        assert len(lines) == 1, (script, err[-3000:])  # no TensorFlow start-up lines (absl, CUDA probing)
    assert not (tmp_path / "out").exists() and sorted(p.name for p in run.iterdir()) == ["checkpoints"]
