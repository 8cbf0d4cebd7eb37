"""`vidtwin-gen <command> [args]`: each command is a module with `main(argv)` and its own argparse parser.

Modules are imported only when their command runs, so `vidtwin-gen --help` stays instant.

A command that fails prints one line, `vidtwin-gen <command>: error: <message>`, and exits with status 2 (argparse's
own usage errors keep theirs); Ctrl-C exits with 130 and no traceback. The traceback is shown with `--debug`
(anywhere on the command line) or with the environment variable VIDTWIN_GEN_DEBUG=1.
"""

import importlib
import os
import sys

COMMANDS = {
    "demo": ("vidtwin_gen.demo", "make data, train both stages, sample and evaluate (the quickstart)"),
    "make-dataset": ("vidtwin_gen.data.embedded", "write the embedded synthetic data set in UCF-101 layout"),
    "encode-dataset": ("vidtwin_gen.data.latent_cache", "encode a data split into a latent cache"),
    "convert": ("vidtwin_gen.convert", "convert an original VidTwin checkpoint to a diffusers folder"),
    "train-vae": ("vidtwin_gen.training.train_vae", "train the VidTwin autoencoder (one process)"),
    "train-dit": ("vidtwin_gen.training.train_dit", "train the latent DiT (one process)"),
    "generate": ("vidtwin_gen.generate", "sample videos from a trained pipeline (optionally holding one part fixed)"),
    "interpolate": ("vidtwin_gen.generate", "interpolate between two videos or two classes, per part"),
    "reconstruct": ("vidtwin_gen.generate", "encode and decode videos with the autoencoder"),
    "reenact": ("vidtwin_gen.generate", "structure of one clip with the dynamics of another"),
    "eval-recon": ("vidtwin_gen.evaluation.reconstruction", "PSNR/SSIM of autoencoder reconstructions"),
    "eval-fvd": ("vidtwin_gen.evaluation.fvd", "Frechet Video Distance"),
    "eval-decoupling": ("vidtwin_gen.evaluation.decoupling", "do structure and dynamics carry content/drift and fast motion?"),
}


DEBUG_FLAG, DEBUG_ENV = "--debug", "VIDTWIN_GEN_DEBUG"
EXIT_FAILURE, EXIT_INTERRUPTED = 2, 130


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: vidtwin-gen [--debug] <command> [args]   (vidtwin-gen <command> --help for its options)", "",
             "commands:"]
    lines += [f"  {name:<{width}}  {help_text}" for name, (_, help_text) in COMMANDS.items()]
    lines += ["", f"On failure a command prints one error line; {DEBUG_FLAG} or {DEBUG_ENV}=1 shows the traceback."]
    return "\n".join(lines)


def _one_line(error: BaseException) -> str:
    """The error as one line: its message, its lines joined; the type named when the message alone is unclear
    (KeyError: 101). An error re-raised from a DataLoader worker carries the worker's traceback: its last line."""
    message = str(error).strip()
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if "Traceback (most recent call last)" in message:
        lines = lines[-1:]
    message = " ".join(lines)
    if not message or not isinstance(error, (ValueError, TypeError, OSError, RuntimeError)):
        message = f"{type(error).__name__}: {message}" if message else type(error).__name__
    return message


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # --debug is ours wherever it stands, except after "--", where everything belongs to the command.
    end = argv.index("--") if "--" in argv else len(argv)
    debug = DEBUG_FLAG in argv[:end] or os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes", "on")
    argv = [arg for arg in argv[:end] if arg != DEBUG_FLAG] + argv[end:]
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"vidtwin-gen: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(COMMANDS[command][0])
        # Modules serving several commands (generate/reconstruct/reenact) take the command name.
        entry = getattr(module, "main_" + command.replace("-", "_"), None) or module.main
        return entry(rest) or 0
    except KeyboardInterrupt:
        if debug:
            raise
        return EXIT_INTERRUPTED
    except Exception as error:  # SystemExit (argparse, --help) passes through with its own status
        if debug:
            raise
        print(f"vidtwin-gen {command}: error: {_one_line(error)} (add {DEBUG_FLAG} for the traceback)",
              file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
