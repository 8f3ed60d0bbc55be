"""Name the cell that failed in a notebook executed by papermill."""

import sys

import nbformat


def main(path: str) -> int:
    nb = nbformat.read(path, as_version=4)
    code_index = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        code_index += 1
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                first_line = cell.source.strip().splitlines()[0] if cell.source.strip() else ""
                print(f"failing cell: code cell {code_index} (starts with: {first_line!r})")
                print(f"error: {output.get('ename')}: {output.get('evalue')}")
                return 0
    print("no cell recorded an error (the kernel may have died)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
