"""A2A formats: ``operations`` (what each method is), ``reading`` (the parameters, read exactly
as the agent will read them), ``wire`` (errors in each binding's shape), ``task_pages``
(ListTasks page tokens the broker issues)."""
