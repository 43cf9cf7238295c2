"""editloop: a self-hosted code-completion server that learns from a team's own edits."""

__version__ = "0.1.0"
