"""``python -m anyformer`` runs the ``anyformer`` command (also under ``torchrun -m anyformer``)."""

from anyformer.cli.main import cli

if __name__ == "__main__":
    cli()
