"""Paper tables in one command (scripts/reproduce.py): plan (configs -> trainings and evaluations),
state (what is done), runner (here) and slurm (a cluster), results (results/<table>/)."""
