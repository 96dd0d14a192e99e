"""Operations: backups, restore, health, metrics."""
