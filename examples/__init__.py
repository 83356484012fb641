"""Code an internal team can copy; each file stands alone (README, "Approval events")."""
