"""The starter model: trained here from real code when no model can be downloaded (corpus → tokenizer →
FIM pre-training → line phase → export → publish). Serving never imports this package."""
