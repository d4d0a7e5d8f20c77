"""The editing engine: the `Editor` facade, checkpoint loading, the cache, and one subpackage per model family."""
