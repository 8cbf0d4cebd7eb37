"""`vidtwin-gen <command> [args]`: each command is a module with `main(argv)` and its own argparse parser.

Modules are imported only when their command runs, so `vidtwin-gen --help` stays instant.
"""

import importlib
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
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: vidtwin-gen <command> [args]   (vidtwin-gen <command> --help for its options)", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_text}" for name, (_, help_text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"vidtwin-gen: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    # Modules serving several commands (generate/reconstruct/reenact) take the command name.
    entry = getattr(module, "main_" + command.replace("-", "_"), None) or module.main
    return entry(rest) or 0


if __name__ == "__main__":
    sys.exit(main())
