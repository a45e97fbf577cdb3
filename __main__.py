"""The Pulumi program of this project (``pulumi up`` runs it): components/program.py."""

from pathlib import Path

from components.program import main

main(Path(__file__).resolve().parent)
