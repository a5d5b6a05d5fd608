"""make's stages: folds, cache, train, score, predict. Each reads run-folder files and writes run-folder files."""
