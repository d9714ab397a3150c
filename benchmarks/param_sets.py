"""`--set a.b=VALUE` overrides for the benchmark scripts: VALUE is read as YAML and written
into the params section at the dotted path (missing levels are created)."""


def apply_sets(section: dict, sets: list[str]) -> dict:
    import yaml

    for kv in sets:
        key, value = kv.split("=", 1)
        *parents, leaf = key.split(".")
        d = section
        for k in parents:
            d = d.setdefault(k, {})
        d[leaf] = yaml.safe_load(value)
    return section
