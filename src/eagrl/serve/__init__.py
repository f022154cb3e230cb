"""Serving: the policy model behind KServe's ModelServer (``eagrl serve``) and champion promotion."""
