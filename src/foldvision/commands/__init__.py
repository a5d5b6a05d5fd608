"""The commands around the stages: check, demo-data, ensemble, evaluate, ablate, leaderboard, report, plots."""
