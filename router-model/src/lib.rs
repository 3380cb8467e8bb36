//! The learned part of routing: embedder, selector and checkpoint format.
