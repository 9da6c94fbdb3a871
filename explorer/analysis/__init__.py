"""The analysis wing: Pareto frontiers, figures and the HTML report (data frames in, never measuring)."""
