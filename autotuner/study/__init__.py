"""The study database: the only code that knows how autotune's data is stored in Optuna.

- `storage`: opening SQLite / PostgreSQL storages, loading studies, redacting passwords.
- `records`: the stored keys, and reading and writing a trial's config, metrics, failure and the
  study's pick and race, each trial's result in one transaction.
- `journal`: surviving a database outage: retries, and a local journal of unstored results.
"""
