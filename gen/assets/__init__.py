"""Files shipped with rsgen: example semantic layouts (canonical class ids, 256×256, 0.5 m) for the quickstart."""

from pathlib import Path

EXAMPLE_LAYOUTS = Path(__file__).parent / "layouts"

__all__ = ["EXAMPLE_LAYOUTS"]
