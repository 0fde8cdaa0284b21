"""``psn bench peers``: psn-serve beside the servers a user would otherwise deploy, in the same run."""
