"""Context from the codebase: what the model sees beyond the cursor's file, and what it may copy.

A :class:`~editloop.completion.context.workspace.Workspace` over one project root keeps

* a ring of recently visited and edited chunks (near-duplicates evicted, like llama.vim's),
* definitions of the identifiers near the cursor (tree-sitter over the workspace's files),
* the top-k chunks most similar to the cursor's surroundings (BM25 over identifier tokens),
* a line index that proposes continuations copied from elsewhere in the codebase,

all built incrementally from files inside the root, honouring ``.gitignore`` and a size cap.
:class:`~editloop.completion.context.workspace.ContextService` hands out one workspace per root
that the settings allow (``context_roots``), in a bounded cache.
"""
