"""Where the events of resumable streams live, in this process or in Redis (docs/api.md, "Resumable streams")."""
