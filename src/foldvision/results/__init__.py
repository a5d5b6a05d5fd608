"""The results side (no torch): metrics, the decision rule, submissions, comparisons, the report and plots."""
