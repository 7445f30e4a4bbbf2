# Task rules of the runtime decision (DESIGN.md section 6).
# (Plain comment: a package carries one METADATA block, in authz.rego.)
#
# Same package as authz.rego: these rules add reasons to its deny set.
# Data lives in policies/bedrock/tasks/data.json (data.bedrock.tasks):
#
#   open:                {min_ttl_seconds, max_ttl_seconds, max_calls}
#   default_call_budget: number   calls a task may make unless overridden
#   call_budgets:        {SPIFFE ID or "/*" pattern: number}
#
# OpenTask: input.task is the task as it would be opened. Bounds that the
# caller can fix are reported as invalid_* reasons; the proxy answers a deny
# made only of invalid_* reasons with 400 instead of 403.
#
# Every other call in a task: input.task is its running chain context.
# * budget: calls so far must stay below the task's call budget;
# * scope: the model must be one the task named (when it named any), and
#   the classification must not exceed the task's;
# * taint: once the task has seen restricted data (or this call carries
#   it), only models cleared for restricted (data.bedrock.models) may be
#   called for the rest of the task;
# * tools: every tool a call requests must be on the task's allowed list.
package bedrock.authz

import data.bedrock.lib

default task_data := {}

task_data := data.bedrock.tasks

task_operations := {"OpenTask", "GetTask", "EndTask"}

open_bounds := object.get(task_data, "open", {})

# call_budgets keys resolve like registry keys (exact, else the longest "/*"
# pattern), so a budget follows the identity however it was registered.
call_budget := budget if {
	budget := lib.registry_entry(object.get(task_data, "call_budgets", {}), spiffe_id)
} else := object.get(task_data, "default_call_budget", 0)

in_task if {
	is_object(task)
	not operation in task_operations
}

task_list(key) := object.get(task, key, [])

# --- OpenTask bounds ----------------------------------------------------------

deny contains msg if {
	operation == "OpenTask"
	not is_object(task)
	msg := "invalid_task: OpenTask carries no task"
}

deny contains msg if {
	operation == "OpenTask"
	ttl := object.get(task, "ttl_seconds", 0)
	not ttl_in_bounds(ttl)
	msg := sprintf(
		"invalid_ttl: ttl_seconds %v is outside %v..%v",
		[ttl, object.get(open_bounds, "min_ttl_seconds", null), object.get(open_bounds, "max_ttl_seconds", null)],
	)
}

ttl_in_bounds(ttl) if {
	ttl >= open_bounds.min_ttl_seconds
	ttl <= open_bounds.max_ttl_seconds
}

deny contains msg if {
	operation == "OpenTask"
	calls := object.get(task, "max_calls", 0)
	not calls <= object.get(open_bounds, "max_calls", 0)
	msg := sprintf("invalid_max_calls: max_calls %v is above %v", [calls, object.get(open_bounds, "max_calls", 0)])
}

deny contains msg if {
	operation == "OpenTask"
	registered
	some name in task_list("models")
	not name in listed("models")
	msg := sprintf("invalid_task_models: %v is not in the allowlist of %s", [name, subject])
}

# --- calls inside a task ------------------------------------------------------

deny contains msg if {
	in_task
	task.opened_by != spiffe_id
	msg := sprintf("task_not_owned: task %v was not opened by %s", [task.id, subject])
}

deny contains msg if {
	in_task
	object.get(task, "calls", 0) >= call_budget
	msg := sprintf("task_budget_exhausted: task %v has made %v of %v calls", [task.id, task.calls, call_budget])
}

deny contains msg if {
	in_task
	count(task_list("models")) > 0
	is_object(model)
	not task_model_listed
	msg := sprintf("task_model_not_allowed: %v is not one of the models of task %v", [model_id, task.id])
}

task_model_listed if model.id in task_list("models")

task_model_listed if model.foundation_id in task_list("models")

deny contains msg if {
	in_task
	lib.rank(effective) > lib.ceiling(object.get(task, "classification", null))
	msg := sprintf("task_classification_exceeded: %v is above the %v of task %v", [effective, task.classification, task.id])
}

tainted if "restricted" in task_list("classifications_seen")

tainted if effective == "restricted"

# The model's own ceiling as the authz rules read it (by foundation model id), so
# a cleared model stays cleared when called through a profile or an ARN.
cleared_for_restricted if lib.ceiling(model_max_classification) >= lib.rank("restricted")

deny contains msg if {
	in_task
	tainted
	is_object(model)
	not cleared_for_restricted
	msg := sprintf("task_tainted: task %v has seen restricted data; %v is not cleared for restricted", [task.id, model_id])
}

deny contains msg if {
	in_task
	is_array(tools)
	some tool in tools
	not tool in task_list("tools")
	msg := sprintf("task_tool_not_allowed: tool %v is not on the allowed list of task %v", [tool, task.id])
}
