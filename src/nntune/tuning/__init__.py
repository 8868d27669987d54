"""The tuning loop, above DVC: the grid, the search space and its schedules, the Optuna
study and its driver, the ranking of finished experiments and the report page."""
