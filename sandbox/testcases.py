"""Test cases as data: parsing a sample's ``tests`` field into program tests and call tests.

A call test is split, here on the trusted side, into an *expression* that the sandbox evaluates in the
solution's namespace (``digit_sum(1234)``) and a *check* with the expected value (``== 10``) that never
leaves the host. So the untrusted process never sees what the right answer is, and whatever it does to
its own interpreter it can only choose which value to report. Formats (see tasks/schema.md):

- ``{"stdin": "1 2\\n", "stdout": "3\\n"}``: a program run on that input (competitive-programming style);
- ``"assert f(2) == 4"`` or ``{"assert": "..."}``: MBPP/HumanEval style; one test per assert statement;
- ``{"call": "f(2)", "expected": 4}``: the same with the expected value as JSON.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Any, Sequence, Union

from sandbox.values import close_enough, is_real_number, same_value

_CONSTRUCTORS = {"set": set, "frozenset": frozenset, "tuple": tuple, "list": list}
_ISCLOSE_OPTIONS = ("rel_tol", "abs_tol")
_SUPPORTED = "==, !=, in, is None/True/False, math.isclose(...), abs(a - b) < tol, f(...) or not f(...)"


@dataclass(frozen=True)
class ProgramTest:
    """Run the program on ``stdin``; it passes when it exits 0 and its output matches ``stdout``."""

    stdin: str
    stdout: str


@dataclass(frozen=True)
class CallTest:
    """Evaluate ``expression`` in the sandbox; the host applies ``check`` to the reported value.

    checks: ``equal`` / ``not_equal`` / ``member`` (of ``expected``, a collection) / ``close``
    (``math.isclose`` with ``rel_tol``, ``abs_tol``) / ``within`` (``abs(value - expected)`` below
    ``abs_tol``, ``<`` when ``strict``) / ``truthy`` / ``falsy``.
    """

    expression: str
    check: str = "equal"
    expected: Any = None
    rel_tol: float = 1e-9
    abs_tol: float = 0.0
    strict: bool = False

    def accepts(self, value: Any) -> bool:
        """Whether the decoded plain ``value`` passes this check."""
        if self.check == "equal":
            return same_value(value, self.expected)
        if self.check == "not_equal":
            return not same_value(value, self.expected)
        if self.check == "member":
            return any(same_value(value, option) for option in self.expected)
        if self.check == "close":
            return close_enough(value, self.expected, rel_tol=self.rel_tol, abs_tol=self.abs_tol)
        if self.check == "within":
            if not is_real_number(value):
                return False
            gap = abs(value - self.expected)
            return gap < self.abs_tol if self.strict else gap <= self.abs_tol
        if self.check == "truthy":
            return bool(value)
        if self.check == "falsy":
            return not value
        raise ValueError(f"unknown check {self.check!r}")


TestCase = Union[ProgramTest, CallTest]


def parse_tests(tests: Any) -> list[TestCase]:
    """The test cases of a sample's ``tests`` field; a one-line ``ValueError`` naming the bad item."""
    if isinstance(tests, (str, bytes)) or not isinstance(tests, Sequence):
        raise ValueError(f"tests must be a list of test cases, got {type(tests).__name__}")
    if not tests:
        raise ValueError("tests is empty: a sample needs at least one test case")
    cases: list[TestCase] = []
    for index, item in enumerate(tests):
        where = f"tests[{index}]"
        if isinstance(item, str):
            cases += parse_asserts(item, where=where)
        elif isinstance(item, dict) and set(item) <= {"stdin", "stdout"} and "stdout" in item:
            stdin, stdout = item.get("stdin", ""), item["stdout"]
            if not isinstance(stdin, str) or not isinstance(stdout, str):
                raise ValueError(f"{where}: 'stdin' and 'stdout' must be strings")
            cases.append(ProgramTest(stdin=stdin, stdout=stdout))
        elif isinstance(item, dict) and set(item) == {"assert"} and isinstance(item["assert"], str):
            cases += parse_asserts(item["assert"], where=where)
        elif isinstance(item, dict) and set(item) == {"call", "expected"} and isinstance(item["call"], str):
            _check_expression(item["call"], where)
            _check_json_value(item["expected"], where)
            cases.append(CallTest(expression=item["call"], expected=item["expected"]))
        else:
            raise ValueError(
                f"{where}: expected {{'stdin', 'stdout'}}, {{'call', 'expected'}}, {{'assert'}} or an assert "
                f"string, got {str(item)[:80]!r}"
            )
    return cases


def parse_asserts(source: str, *, where: str = "test") -> list[CallTest]:
    """One :class:`CallTest` per ``assert`` statement in ``source`` (anything else is refused)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError) as exc:
        raise ValueError(f"{where}: not valid Python: {exc}".splitlines()[0]) from None
    if not tree.body:
        raise ValueError(f"{where}: no assert statement")
    cases = []
    for statement in tree.body:
        if not isinstance(statement, ast.Assert):
            raise ValueError(f"{where}: only assert statements are supported, found {type(statement).__name__}")
        cases.append(_call_test(statement.test, where))
    return cases


def literal_value(node: ast.AST) -> Any:
    """The value of a literal expression (``ast.literal_eval`` plus ``set()``, ``frozenset([...])``,
    ``tuple(...)``, ``list(...)``, ``float('inf')``); ``ValueError`` for anything else."""
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        pass
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords and len(node.args) <= 1:
        name, args = node.func.id, node.args
        if name == "float" and len(args) == 1 and isinstance(args[0], ast.Constant) and isinstance(args[0].value, str):
            if args[0].value.strip().lower().lstrip("+-") in ("inf", "infinity", "nan"):
                return float(args[0].value)
        if name in _CONSTRUCTORS:
            return _CONSTRUCTORS[name](literal_value(args[0]) if args else ())
    raise ValueError("not a literal")


def _call_test(node: ast.expr, where: str) -> CallTest:
    if isinstance(node, ast.Compare) and len(node.ops) == 1:
        left, op, right = node.left, node.ops[0], node.comparators[0]
        if isinstance(op, (ast.Eq, ast.NotEq)):
            expression, expected = _split_literal(left, right, where, "==" if isinstance(op, ast.Eq) else "!=")
            return CallTest(ast.unparse(expression), "equal" if isinstance(op, ast.Eq) else "not_equal", expected)
        singleton = isinstance(right, ast.Constant) and right.value in (None, True, False)
        if isinstance(op, (ast.Is, ast.IsNot)) and singleton:
            check = "equal" if isinstance(op, ast.Is) else "not_equal"
            return CallTest(_expression(left, where), check, right.value)
        if isinstance(op, ast.In):
            options = _literal_or_fail(right, where, "the right side of 'in'")
            if not isinstance(options, (list, tuple, set, frozenset)):
                raise ValueError(f"{where}: the right side of 'in' must be a literal list, tuple or set")
            return CallTest(_expression(left, where), "member", list(options))
        if isinstance(op, (ast.Lt, ast.LtE)) and _is_abs_of_difference(left):
            a, b = left.args[0].left, left.args[0].right
            expression, expected = _split_literal(a, b, where, "-")
            tolerance = _literal_or_fail(right, where, "the tolerance")
            return CallTest(ast.unparse(expression), "within", _real(expected, where), abs_tol=_real(tolerance, where),
                            strict=isinstance(op, ast.Lt))
    if isinstance(node, ast.Call) and _called_name(node) == "isclose" and len(node.args) == 2:
        expression, expected = _split_literal(node.args[0], node.args[1], where, "isclose")
        options = {k.arg: _real(_literal_or_fail(k.value, where, k.arg), where) for k in node.keywords}
        if set(options) - set(_ISCLOSE_OPTIONS):
            raise ValueError(f"{where}: isclose accepts only {', '.join(_ISCLOSE_OPTIONS)}")
        return CallTest(ast.unparse(expression), "close", _real(expected, where), **options)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        return CallTest(_expression(node.operand, where), "falsy")
    return CallTest(_expression(node, where), "truthy")


def _expression(node: ast.expr, where: str) -> str:
    # A comparison or boolean operator would be evaluated by the untrusted process (where an object's
    # __eq__ or __lt__ can say anything): refuse it rather than trust its result.
    if isinstance(node, (ast.Compare, ast.BoolOp)):
        raise ValueError(f"{where}: unsupported assert form {ast.unparse(node)[:60]!r}; use {_SUPPORTED}")
    return ast.unparse(node)


def _split_literal(a: ast.expr, b: ast.expr, where: str, op: str) -> tuple[ast.expr, Any]:
    """``(expression, expected)`` from two operands, exactly one of which must be a literal."""
    for expression, literal in ((a, b), (b, a)):
        try:
            value = literal_value(literal)
        except ValueError:
            continue
        _expression(expression, where)
        return expression, value
    raise ValueError(f"{where}: one side of {op!r} must be a literal value (the expected result)")


def _literal_or_fail(node: ast.expr, where: str, what: str) -> Any:
    try:
        return literal_value(node)
    except ValueError:
        raise ValueError(f"{where}: {what} must be a literal value") from None


def _real(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where}: expected a real number, got {value!r}")
    return value


def _is_abs_of_difference(node: ast.expr) -> bool:
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "abs"
            and len(node.args) == 1 and not node.keywords
            and isinstance(node.args[0], ast.BinOp) and isinstance(node.args[0].op, ast.Sub))


def _called_name(node: ast.Call) -> str | None:
    if isinstance(node.func, ast.Name):
        return node.func.id
    if isinstance(node.func, ast.Attribute):
        return node.func.attr
    return None


def _check_expression(source: str, where: str) -> None:
    try:
        ast.parse(source, mode="eval")
    except (SyntaxError, ValueError) as exc:
        raise ValueError(f"{where}: 'call' must be one Python expression: {exc}".splitlines()[0]) from None


def _check_json_value(value: Any, where: str) -> None:
    if value is None or type(value) in (bool, int, float, str):
        return
    if type(value) is list:
        for item in value:
            _check_json_value(item, where)
        return
    if type(value) is dict and all(type(k) is str for k in value):
        for item in value.values():
            _check_json_value(item, where)
        return
    raise ValueError(f"{where}: 'expected' must be a JSON value, got {type(value).__name__}")
