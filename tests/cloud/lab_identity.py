"""A paste filter that makes Glance's no-auth flavor usable under today's policy defaults.

Glance's stock no-auth pipeline ("unauthenticated-context") builds a context with no project
and no roles, which the secure RBAC defaults (enforce_new_defaults, since Glance 2023.2) refuse
with 403 for almost everything. This filter stands where keystonemiddleware would: it sets the
headers keystonemiddleware sets for a validated token (a confirmed identity, a project, a user
and roles), and Glance's ordinary `context` middleware builds the request context from them.

Test use only: every request is treated as this one admin user of this one project.
"""

# The headers keystonemiddleware sets after validating a token (and strips from the client's
# request first: a client must not choose its own identity).
IDENTITY_HEADERS = (
    "HTTP_X_IDENTITY_STATUS",
    "HTTP_X_PROJECT_ID",
    "HTTP_X_PROJECT_NAME",
    "HTTP_X_PROJECT_DOMAIN_ID",
    "HTTP_X_USER_ID",
    "HTTP_X_USER_NAME",
    "HTTP_X_USER_DOMAIN_ID",
    "HTTP_X_ROLES",
    "HTTP_X_TENANT_ID",
    "HTTP_X_SERVICE_CATALOG",
)


class LabIdentity:
    def __init__(self, app, project_id, project_name, user_id, user_name, roles):
        self.app = app
        self.headers = {
            "HTTP_X_IDENTITY_STATUS": "Confirmed",
            "HTTP_X_PROJECT_ID": project_id,
            "HTTP_X_PROJECT_NAME": project_name,
            "HTTP_X_PROJECT_DOMAIN_ID": "default",
            "HTTP_X_USER_ID": user_id,
            "HTTP_X_USER_NAME": user_name,
            "HTTP_X_USER_DOMAIN_ID": "default",
            "HTTP_X_ROLES": roles,
        }

    def __call__(self, environ, start_response):
        for key in IDENTITY_HEADERS:
            environ.pop(key, None)
        environ.update(self.headers)
        return self.app(environ, start_response)


def filter_factory(global_conf, **local_conf):
    """Paste entry point; the identity comes from the filter's section of the paste ini."""

    def make(app):
        return LabIdentity(
            app,
            project_id=local_conf["project_id"],
            project_name=local_conf.get("project_name", "lab"),
            user_id=local_conf["user_id"],
            user_name=local_conf.get("user_name", "lab-admin"),
            roles=local_conf.get("roles", "admin,member,reader"),
        )

    return make
