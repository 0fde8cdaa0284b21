"""``psn bench transcript``: one sequence streamed through each kind, and when each answers."""
