"""The results pipeline behind `scripts/reproduce.py`: derived run configs, the run plan,
the table and the plots."""
