"""The only code that speaks Redis: key layout, the cache core, one module per read path."""
