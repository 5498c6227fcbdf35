def all_outputs(wildcards):
    return [network(ds, exp) for ds in enabled_datasets() for exp in experiments(ds)]
