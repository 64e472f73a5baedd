"""Hyperparameters and configuration of a task as the server takes them: the request schema
(``schema/services/_tasks_common.conf``: ``section_params`` of ``params_item``,
``configuration_item``: objects whose fields are strings), ``bll/task/param_utils.py:
params_prepare_for_save`` (no empty section, parameter or configuration names) and the strict
embedded documents of ``database/model/task/task.py`` (``ParamsItem``, ``ConfigurationItem``:
no other fields; name and value, and a parameter's section, required)."""

from __future__ import annotations

from typing import Any

from .. import errors

# ParamsItem / ConfigurationItem: their fields in declaration order (the order Mongo stores them in)
PARAMS_ITEM_FIELDS = ("section", "name", "value", "type", "description")
CONFIGURATION_ITEM_FIELDS = ("name", "value", "type", "description")


def _not_of_type(instance: Any, expected: str, path: list[str]) -> errors.APIError:
    """A schema violation as ``schema_validator.py:detailed_validate`` reports jsonschema's."""
    return errors.validation_error(message=f"{instance!r} is not of type '{expected}'", path=path, validator="type", validator_value=expected)


def check_item_types(item: Any, path: list[str], fields: tuple[str, ...]) -> None:
    """The schema of one item: an object whose known fields are strings (null is dropped first)."""
    if not isinstance(item, dict):
        raise _not_of_type(item, "object", path)
    for key in fields:
        if item.get(key) is not None and not isinstance(item[key], str):
            raise _not_of_type(item[key], "string", [*path, key])


def _stored_item(item: dict, path: list[str], document: str, fields: tuple[str, ...], required: tuple[str, ...]) -> dict:
    """The strict document: an unknown field is a ``FieldDoesNotExist`` (a validation error on
    create and edit), a missing required one fails the save (``ValidationError``)."""
    unknown = sorted(set(item) - set(fields))
    if unknown:
        raise errors.validation_error(document=document, field=unknown[0])
    for key in required:
        if item.get(key) is None:
            field = ".".join([*path, key])
            raise errors.data_validation_error(f"ValidationError (Task:None) (Field is required: ['{field}'])", **{field: "Field is required"})
    return {key: item[key] for key in fields if item.get(key) is not None}


def _named(name: str, kind: str) -> str:
    if not name:
        raise errors.validation_error(f"Empty {kind} name is not allowed")
    return name


def checked_hyperparams(hyperparams: Any) -> dict:
    """``{section: {name: ParamsItem}}`` checked, each item in its stored field order."""
    if not isinstance(hyperparams, dict):
        raise _not_of_type(hyperparams, "object", ["hyperparams"])
    checked = {}
    for section, items in hyperparams.items():
        if not isinstance(items, dict):
            raise _not_of_type(items, "object", ["hyperparams", section])
        for name, item in items.items():
            check_item_types(item, ["hyperparams", section, name], PARAMS_ITEM_FIELDS)
        checked[_named(section, "section")] = {
            _named(name, "parameter"): _stored_item(
                item, ["hyperparams", section, name], "ParamsItem", PARAMS_ITEM_FIELDS, ("section", "name", "value")
            )
            for name, item in items.items()
        }
    return checked


def checked_configuration(configuration: Any) -> dict:
    """``{name: ConfigurationItem}`` checked, each item in its stored field order."""
    if not isinstance(configuration, dict):
        raise _not_of_type(configuration, "object", ["configuration"])
    for name, item in configuration.items():
        check_item_types(item, ["configuration", name], CONFIGURATION_ITEM_FIELDS)
    return {
        _named(name, "configuration"): _stored_item(item, ["configuration", name], "ConfigurationItem", CONFIGURATION_ITEM_FIELDS, ("name", "value"))
        for name, item in configuration.items()
    }
