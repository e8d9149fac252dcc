"""The HTTP edges: thin Litestar routes that turn HTTP into mediation and back."""
