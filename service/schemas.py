"""Schemas shared by every section: the error body and small admin/setup bodies."""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from service.fields import Id


class ErrorSchema(Schema):
    error = fields.String(required=True)
    code = fields.String()
    details = fields.Dict()


class NameIn(Schema):
    name = fields.String(required=True, validate=validate.Length(1, 200))


class NamedOut(Schema):
    id = fields.Integer(required=True)
    name = fields.String(required=True)


class MemberIn(Schema):
    user_id = Id(required=True)


class StatusOut(Schema):
    status = fields.String(required=True)


class ReadyOut(Schema):
    status = fields.String(required=True)
    postgres = fields.String(required=True)
    redis = fields.String(required=True)
