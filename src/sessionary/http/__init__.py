"""HTTP plumbing shared by the web application and the features' routers: JSON errors,
cookies, and the client's IP. Knows Starlette, not FastAPI apps or features."""
