"""Each setting is declared once: no module outside `charlora/params/` carries its own default for a key of
the training table (`params/table.py`) or of the evaluation and preparation tables (`params/evaluation.py`).

Read from the source (AST), so the test names the file and line. What counts as a second declaration:
a fallback on a read value, `values.get("key", <literal>)`, `values.get("key") or <literal>`,
`values["key"] or <literal>`; and the table's own default written out again under the key's name: an argparse
option `--key` with `default=` it, a function parameter or class field named like the key defaulting to it, a
GUI component stored under the key's name (`f["seed"] = gr.Number(value=1234)`). (A literal that is not the
table's default under a common name, `seed=0` for a tiny model's weights, is another setting, not this one.)
None is allowed everywhere: it means "not given here", not a value.
"""

import ast
from pathlib import Path

from charlora.params import PARAMS_BY_KEY
from charlora.params.evaluation import EVALUATION, PREPARE

PACKAGE = Path(__file__).resolve().parents[1] / "charlora"
KEYS = set(PARAMS_BY_KEY) | set(EVALUATION) | set(PREPARE)
DEFAULTS: dict[str, list] = {}
for table in (PARAMS_BY_KEY, EVALUATION, PREPARE):
    for key, param in table.items():
        DEFAULTS.setdefault(key, []).append(param.default)


def _literal(node) -> bool:
    """A value written out in the code (a number, string, bool, or a tuple/list of them), but not None."""
    if isinstance(node, ast.Constant):
        return node.value is not None
    if isinstance(node, ast.UnaryOp) and isinstance(node.operand, ast.Constant):
        return True  # -1
    return isinstance(node, (ast.Tuple, ast.List)) and bool(node.elts) and all(_literal(e) for e in node.elts)


def _redeclares(key: str, node) -> bool:
    """`node` writes out the table's default of `key` again."""
    if key not in KEYS or not _literal(node):
        return False
    try:
        value = ast.literal_eval(node)
    except ValueError:
        return False
    value = list(value) if isinstance(value, tuple) else value
    return any(value == (list(d) if isinstance(d, tuple) else d) and type(value) is type(d) or
               (isinstance(value, (int, float)) and not isinstance(value, bool) and isinstance(d, (int, float))
                and not isinstance(d, bool) and value == d) for d in DEFAULTS[key])


def _key(node) -> str | None:
    return node.value if isinstance(node, ast.Constant) and node.value in KEYS else None


def _read_of(node) -> str | None:
    """The key read by `x.get("key")` or `x["key"]`."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get" and node.args:
        return _key(node.args[0])
    if isinstance(node, ast.Subscript):
        return _key(node.slice)
    return None


def second_declarations(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            attr, args, kwargs = node.func.attr, node.args, {k.arg: k.value for k in node.keywords}
            if attr == "get" and len(args) == 2 and _key(args[0]) and _literal(args[1]):
                found.append((node.lineno, f".get({args[0].value!r}, {ast.unparse(args[1])})"))
            if attr == "add_argument" and args and isinstance(args[0], ast.Constant) \
                    and str(args[0].value).startswith("--") and "default" in kwargs:
                key = str(args[0].value)[2:].replace("-", "_")
                if _redeclares(key, kwargs["default"]):
                    found.append((node.lineno, f"--{key} default={ast.unparse(kwargs['default'])}"))
        elif isinstance(node, ast.BoolOp) and isinstance(node.op, ast.Or) and len(node.values) == 2:
            key = _read_of(node.values[0])
            if key and _literal(node.values[1]):
                found.append((node.lineno, f"{ast.unparse(node)}"))
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            arguments = node.args.posonlyargs + node.args.args
            pairs = list(zip(arguments[len(arguments) - len(node.args.defaults):], node.args.defaults))
            pairs += [(a, d) for a, d in zip(node.args.kwonlyargs, node.args.kw_defaults) if d is not None]
            for argument, default in pairs:
                if _redeclares(argument.arg, default):
                    found.append((node.lineno, f"def {node.name}({argument.arg}={ast.unparse(default)})"))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            if _redeclares(node.target.id, node.value):
                found.append((node.lineno, f"{node.target.id} = {ast.unparse(node.value)}"))
        elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            for target in node.targets:
                name = target.id if isinstance(target, ast.Name) else _read_of(target)
                value = {k.arg: k.value for k in node.value.keywords}.get("value")
                if name and value is not None and _redeclares(name, value):
                    found.append((node.lineno, f"{ast.unparse(target)} = ...(value={ast.unparse(value)})"))
    return found


def test_no_module_outside_params_declares_a_default_of_its_own():
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.relative_to(PACKAGE).parts[0] == "params":
            continue
        for line, text in second_declarations(ast.parse(path.read_text(encoding="utf-8"))):
            problems.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {text}")
    assert problems == [], ("defaults declared outside charlora/params/ (read the table instead):\n"
                            + "\n".join(problems))


def test_the_checker_finds_each_kind_of_second_declaration():
    source = '''
lr = values.get("learning_rate", 1e-4)
name = values.get("lr_scheduler") or "constant"
power = values["lr_scheduler_power"] or 1.0
parser.add_argument("--caption-extension", default=".txt")
def prepare(images, repeats=10): pass
class Spec:
    seed: int = 1234
f["steps"] = gr.Number(label="Steps", value=20)
cfg = gr.Number(value=7.0)
fine = values.get("learning_rate")
also_fine = values.get("not_a_setting", 3)
parser.add_argument("--negative", default=None)
def make_tiny_model(folder, seed=0): pass
'''
    found = [text for _, text in second_declarations(ast.parse(source))]
    assert len(found) == 8, found
    assert ".get('learning_rate', 0.0001)" in found and "def prepare(repeats=10)" in found


def test_an_unset_optional_value_is_declared_once_and_said_in_its_help():
    from charlora.params import PARAMS, defaults, effective

    declared = [p for p in PARAMS if p.unset is not None]
    assert {p.key for p in declared} >= {"lr_scheduler_num_cycles", "lr_scheduler_power"}
    for param in declared:
        assert param.optional and f"empty = {param.unset:g}" in param.help, param.key
        assert effective(defaults(), param.key) == param.unset
        assert effective(dict(defaults(), **{param.key: 3}), param.key) == 3
