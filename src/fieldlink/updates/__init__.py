"""Updates: TUF repository, releases, rollouts, signed configurations."""
