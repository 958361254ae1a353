#!/usr/bin/python3
"""Validates an OCI image layout against the OCI image-spec JSON schemas Debian ships
(golang-github-opencontainers-image-spec-dev): oci-layout, index.json, every manifest and config.

usage: validate_oci.py STORE_DIR     prints "ok: N documents" or the errors; exit 1 on any error
"""
import json
import os
import sys

import jsonschema

SCHEMA_DIR = "/usr/share/gocode/src/github.com/opencontainers/image-spec/schema"


def load(name):
    with open(os.path.join(SCHEMA_DIR, name)) as f:
        return json.load(f)


def validator(name):
    schema = load(name)
    # The schemas reference each other by relative names ("content-descriptor.json"): serve every
    # reference from the local directory, by its file name.
    def local(uri):
        return load(uri.rsplit("/", 1)[-1].split("#", 1)[0])

    resolver = jsonschema.RefResolver.from_schema(schema, handlers={"https": local, "http": local})
    return jsonschema.Draft4Validator(schema, resolver=resolver)


def main():
    store = sys.argv[1]
    errors = []
    count = 0

    def check(v, doc, what):
        nonlocal count
        count += 1
        for e in v.iter_errors(doc):
            errors.append(f"{what}: {e.message} at {list(e.absolute_path)}")

    def blob(digest):
        algo, hexd = digest.split(":", 1)
        with open(os.path.join(store, "blobs", algo, hexd)) as f:
            return json.load(f)

    with open(os.path.join(store, "oci-layout")) as f:
        check(validator("image-layout-schema.json"), json.load(f), "oci-layout")
    with open(os.path.join(store, "index.json")) as f:
        index = json.load(f)
    check(validator("image-index-schema.json"), index, "index.json")
    manifest_v = validator("image-manifest-schema.json")
    config_v = validator("config-schema.json")
    for desc in index["manifests"]:
        m = blob(desc["digest"])
        check(manifest_v, m, f"manifest {desc['digest']}")
        check(config_v, blob(m["config"]["digest"]), f"config {m['config']['digest']}")
    if errors:
        print("\n".join(errors))
        sys.exit(1)
    print(f"ok: {count} documents")


if __name__ == "__main__":
    main()
