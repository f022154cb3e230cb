# A stand-in for the official PostgreSQL image where none can be pulled: Debian's postgresql package with the
# official image's interface (POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB, data in /var/lib/postgresql/data,
# initialised on first start) and PGPORT for the port (the stack runs on the host network).
#   docker build -f docker/postgres.Dockerfile --build-arg BASE_IMAGE=eagrl-base:bookworm -t eagrl-postgres:15 .
ARG BASE_IMAGE=debian:12.12-slim
FROM ${BASE_IMAGE}
# the user first, with a fixed id, so the package adopts it (its own would get whatever id is free)
RUN groupadd --gid 10002 postgres && useradd --uid 10002 --gid 10002 --home-dir /var/lib/postgresql postgres \
 && apt-get update && apt-get install -y --no-install-recommends postgresql-15 \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /var/lib/postgresql/data && chown postgres:postgres /var/lib/postgresql/data && chmod 700 /var/lib/postgresql/data
COPY docker/postgres/entrypoint.sh /usr/local/bin/eagrl-postgres
USER 10002:10002
ENV PGDATA=/var/lib/postgresql/data PGPORT=5432
ENTRYPOINT ["sh", "/usr/local/bin/eagrl-postgres"]
