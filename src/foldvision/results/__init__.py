"""The results library (no torch): metrics, decision rules, submissions, blends, comparisons, tracking."""
