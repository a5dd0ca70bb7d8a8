"""``mcaas-search bench``: the default search against the MCaaS fixed profiles, random search and
peer methods (``peers``: what other tools give by default, run once on the same teacher and data)
on one workload (``plan``), compared at the trial count every method reached, with the trial count
at which the search reaches random search's final hypervolume (``results``), a paired confidence
interval on each best trial's test drop (``paired``), written as Markdown, CSVs and plots
(``summary``)."""
