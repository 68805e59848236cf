"""PostgreSQL (source of truth) and Redis (fast shared state) behind small interfaces."""
