"""Experiments end to end, on top of everything else: one run from its folder's birth to its report (pipeline),
several SAEs fed from one pass over the data (sweep), and the chapter's comparison and leaderboards (compare)."""
