"""One module per OpenAPI tag; each function is the snake_case operationId it serves (see cortex.http.routing)."""
