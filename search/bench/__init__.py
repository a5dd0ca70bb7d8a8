"""``mcaas-search bench``: the default search against the MCaaS fixed profiles and random search
on one workload (``plan``), compared at the trial count every method reached (``results``), with a
paired confidence interval on each best trial's test drop (``paired``), written as Markdown, CSVs
and plots (``summary``)."""
