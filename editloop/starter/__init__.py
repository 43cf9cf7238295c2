"""The starter model: trained here from real code when no model can be downloaded (corpus → tokenizer →
FIM pre-training → line phase → export → publish). Serving never imports this package."""

from pathlib import Path

# Starter models committed with the code, one folder per size (`editloop models ship` writes them).
SHIPPED_DIR = Path(__file__).parent / "shipped"
