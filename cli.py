"""What every script shares on its command line.

    def main(argv=None) -> int:
        parser = cli.parser(__doc__)              # description + the docstring's examples in --help
        parser.add_argument("--image_dir", help="...")
        args = cli.parse(parser, argv)            # also accepts --image-dir; quiets TensorFlow
        import tensorflow as tf                   # heavy imports after parsing: --help stays fast
        ...

    if __name__ == "__main__":
        sys.exit(cli.run(main))

- Every flag is accepted with underscores and with hyphens (`--num_samples` = `--num-samples`).
- `--help` shows the first paragraph of the script's docstring and its indented example commands; it
  imports nothing heavy (scripts import TensorFlow, Keras and OpenCV only after parsing).
- TensorFlow's start-up lines (CUDA probing, cpu_feature_guard, absl) are silenced unless `--verbose`.
- `run(main)` turns expected errors into one line `error: ...` on stderr and an exit status, never a
  traceback (`--verbose` shows it): 0 done, 1 ran but failed (e.g. some inputs skipped), 2 bad input
  or configuration, 130 interrupted (Ctrl-C), 143 terminated (SIGTERM), 141 stdout closed by its reader
  (`| head`: the rest of the output is dropped quietly, the status a shell shows for a process killed by SIGPIPE).
- `add_config_arguments` / `config_from_args`: every script's --preset, --config and --set (config.py);
  `architecture_mismatch`: a checkpoint that does not fit the configured model, said with the flags that fix it.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import logging
import os
import sys
import textwrap

# Every user-facing script (each built on this module), as run from the repository root; tests/test_cli.py
# checks each one's --help and flags, bench/help_time.py times its --help.
SCRIPTS = (
    "train.py",
    "test.py",
    "test_map.py",
    "test_dataset.py",
    "prelabel.py",
    "quickstart.py",
    "convert_coco_to_tfrecord.py",
    "tools/convert_detectron2_checkpoint.py",
    "tools/export.py",
    "tools/make_synthetic_dataset.py",
)


def script_argv(script: str) -> list[str]:
    """How an entry of SCRIPTS runs from the repository root: `["train.py"]`, or `["-m", "tools.export"]` for
    tools/ (a package: its scripts import the project from the root)."""
    return ["-m", script.removesuffix(".py").replace("/", ".")] if "/" in script else [script]


EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
EXIT_INTERRUPTED, EXIT_BROKEN_PIPE, EXIT_TERMINATED = 130, 141, 143  # 128 + SIGINT, SIGPIPE, SIGTERM

_VERBOSE = "--verbose" in sys.argv


class CommandError(Exception):
    """An expected failure: `message` (one line naming the file or field and the fix) and an exit status."""

    def __init__(self, message: str, status: int = EXIT_BAD_INPUT):
        super().__init__(message)
        self.status = status


def parser(doc: str, **kwargs) -> argparse.ArgumentParser:
    """A parser whose description is the docstring's first paragraph and whose epilog holds its examples
    (the indented lines), with a `--verbose` flag."""
    paragraphs = textwrap.dedent(doc).strip().split("\n\n")
    examples = [p for p in paragraphs if p.startswith("    ") and "python " in p]
    epilog = "examples:\n" + "\n\n".join(examples) if examples else None
    result = argparse.ArgumentParser(
        description=paragraphs[0],
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        **kwargs,
    )
    result.add_argument(
        "--verbose", action="store_true", help="show TensorFlow's start-up messages and full tracebacks"
    )
    return result


def add_both_spellings(parser: argparse.ArgumentParser) -> None:
    """Registers `--a-b` for every `--a_b` (and the reverse) that the parser does not define already."""
    for action in parser._actions:  # argparse keeps no public list
        for option in list(action.option_strings):
            if not option.startswith("--"):
                continue
            body = option[2:]
            for other in (body.replace("_", "-"), body.replace("-", "_")):
                alias = "--" + other
                if alias not in parser._option_string_actions:
                    action.option_strings.append(alias)
                    parser._option_string_actions[alias] = action


def parse(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """Parses `argv` accepting both flag spellings, then sets TensorFlow's verbosity from `--verbose`."""
    add_both_spellings(parser)
    args = parser.parse_args(argv)
    quiet_tensorflow(verbose=getattr(args, "verbose", False))
    return args


def quiet_tensorflow(verbose: bool = False) -> None:
    """Silences TensorFlow's C++ start-up lines and absl warnings (must run before TensorFlow is imported)."""
    global _VERBOSE
    _VERBOSE = verbose
    if verbose:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    logging.getLogger("absl").setLevel(logging.ERROR)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)


def reuse_freed_memory() -> bool:
    """Makes glibc's malloc keep freed memory for reuse instead of handing every large block back to the kernel.

    By default glibc serves large allocations (above a threshold that starts at 128 KiB and never exceeds
    32 MiB) with a fresh `mmap` and unmaps them when freed, so every large tensor of every call (the deformable attention's gathers are 66 MB at 512x512)
    is faulted in and zero-filled page by page again: about a quarter of an R50 forward on a CPU
    (bench/NOTES.md). Raising the mmap and trim thresholds lets freed blocks be reused; resident memory
    then stays at its peak instead of shrinking between calls. Affects the whole process (TensorFlow,
    NumPy, OpenCV, torch). Returns False, changing nothing, where the C library is not glibc.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    largest = 2**31 - 1  # mallopt takes an int
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's malloc.h
    return bool(mallopt(m_mmap_threshold, largest)) and bool(mallopt(m_trim_threshold, largest))


def import_tensorflow():
    """Imports TensorFlow with its start-up lines silenced (unless `--verbose`) and returns it.

    Also sets malloc to reuse freed memory (`reuse_freed_memory`), as every script wants on a CPU.

    `TF_CPP_MIN_LOG_LEVEL` does not reach the lines absl prints before TensorFlow configures its logging
    ("All log messages before absl::InitializeLog()", "Could not find cuda drivers"), so stderr is pointed
    at /dev/null while the import runs. Scripts call this before anything that imports TensorFlow or Keras.
    """
    reuse_freed_memory()
    if "tensorflow" in sys.modules or _VERBOSE:
        import tensorflow

        return tensorflow
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    return tensorflow


def one_line(error: BaseException) -> str:
    """The first non-empty line of an exception's message (TensorFlow errors: their `message`)."""
    text = getattr(error, "message", None) or (str(error.args[0]) if error.args else "") or str(error)
    if isinstance(error, OSError) and error.filename and error.strerror:
        text = f"{error.filename}: {error.strerror}"
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _is_tensorflow_error(error: BaseException) -> bool:
    tf = sys.modules.get("tensorflow")
    return tf is not None and isinstance(error, tf.errors.OpError)


def run(main, argv: list[str] | None = None) -> int:
    """Calls `main(argv)`; expected errors become one line on stderr and an exit status (see module doc).

    Expected: `CommandError`, ValueError (the repository's ConfigError, ModelLoadError, CheckpointError,
    ConversionError derive from it), OSError (missing, unreadable, unwritable files, full disks),
    TensorFlow's errors (e.g. a shard that cannot be read). `SystemExit("message")` prints the message.
    A reader that closes stdout early (`| head`) stops the script quietly with status 141, as the `signal`
    docs advise ("Note on SIGPIPE": stdout pointed at /dev/null so that the exit's flush fails no more).
    """
    try:
        status = _run(main, argv)
        sys.stdout.flush()  # what is still buffered meets a closed pipe here, not in the interpreter's exit
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    return status


def _run(main, argv: list[str] | None) -> int:
    try:
        status = main(argv)
    except BrokenPipeError:
        raise  # stdout closed by its reader: `run`'s, not an error to report
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except SystemExit as e:
        if isinstance(e.code, str):
            print(e.code.splitlines()[0] if e.code.strip() else e.code, file=sys.stderr)
            return EXIT_BAD_INPUT
        return e.code if e.code is not None else EXIT_OK
    except CommandError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return e.status
    except (ValueError, OSError) as e:
        if _VERBOSE:
            raise
        print(f"error: {one_line(e)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as e:
        if _VERBOSE or not _is_tensorflow_error(e):
            raise
        print(f"error: {one_line(e)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return status if isinstance(status, int) else EXIT_OK


def require_file(path: str, flag: str, hint: str = "check the path") -> str:
    """`path` if it is a file; else OSError naming the flag: it does not exist, or is a folder."""
    if os.path.isdir(path):
        raise IsADirectoryError(f"{flag} {path} is a folder, not a file; pass the file inside it")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{flag} {path} does not exist; {hint}")
    return path


# ---------------------------------------------------------------------------------- configuration
def add_config_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Adds --preset, --config and --set to a script's parser."""
    from config import PRESETS

    group = parser.add_argument_group("configuration")
    group.add_argument(
        "--preset", default="coco_instance", choices=sorted(PRESETS), help="starting recipe (default: coco_instance)"
    )
    group.add_argument("--config", default=None, help="JSON file with overrides (as written by config.save)")
    group.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="overrides applied last, e.g. --set train.batch_size=8 data.image_size=[512,512]",
    )
    return parser


def config_from_args(args: argparse.Namespace, defaults: dict | None = None):
    """Preset, then `defaults` ({"section.field": value}, e.g. the settings saved in a .keras model), then
    the JSON file, then --set overrides; a validated `Mask2FormerConfig`."""
    from config import ConfigError, Mask2FormerConfig, read_config_json

    config = Mask2FormerConfig.preset(args.preset)
    for key, value in (defaults or {}).items():
        config.set(key, value)
    if args.config:
        try:
            Mask2FormerConfig.from_dict(read_config_json(args.config), base=config)
        except ConfigError as e:
            message = str(e)
            raise ConfigError(message if args.config in message else f"config file {args.config}: {message}") from None
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r} must look like section.field=value")
        config.set(key.strip(), value.strip())
    return config.validate()


def architecture_mismatch(found: dict, model_config, source: str, ignore=()) -> str | None:
    """One sentence saying how checkpoint `source` (fields `found`, from `infer_model_config`) differs from
    `model_config` (a `ModelConfig`, or a dict such as `model_architecture` returns) and the --preset / --set
    flags that fix it; None when it fits. Fields in `ignore` are not compared."""
    from model.checkpoints.architecture import BACKBONE_FIELDS, PRODUCT, architecture_differences
    from model_zoo import describe_backbone

    differences = architecture_differences(found, model_config, ignore)
    if not differences:
        return None
    have = [f"{k}={_as_flag(found_value)}" for k, (found_value, _) in differences.items()]
    want = [_as_flag(configured) for _, configured in differences.values()]
    fix = [
        "model.num_heads / model.deformable_points to match" if k == PRODUCT else f"model.{k}={_as_flag(v)}"
        for k, (v, _) in differences.items()
    ]
    backbone = ""
    if ({"backbone"} | {k for keys in BACKBONE_FIELDS.values() for k in keys}) & set(differences):
        configured = describe_backbone(model_config)
        backbone = f" (the checkpoint is {describe_backbone(found)}, the configured model {configured})"
    compared = {k: v for k, v in found.items() if k not in set(ignore) and k != "deformable_points"}
    presets = _matching_presets(compared)
    hint = f"use --preset {' or '.join(presets[:2])}, or " if presets else ""
    return (
        f"checkpoint {source} has {', '.join(have)} but the config says {', '.join(want)}{backbone}; "
        f"{hint}pass --set {' '.join(fix)}"
    )


def _matching_presets(fields: dict) -> list[str]:
    """Names of the presets whose model has every one of `fields` (`ModelConfig` values; zoo names first)."""
    from config import PRESETS, Mask2FormerConfig
    from model.checkpoints.architecture import architecture_differences
    from model_zoo import ZOO_MODELS

    matches = [name for name in PRESETS if not architecture_differences(fields, Mask2FormerConfig.preset(name).model)]
    return sorted(matches, key=lambda n: n not in ZOO_MODELS)


def _as_flag(value) -> str:
    return "[" + ",".join(map(str, value)) + "]" if isinstance(value, tuple | list) else str(value)
