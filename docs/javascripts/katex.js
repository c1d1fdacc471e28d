// Renders the math that pymdownx.arithmatex (generic mode) wraps as
// <span class="arithmatex">\(...\)</span> and <div class="arithmatex">\[...\]</div>.
// Only those elements are touched, so the notebook pages' own MathJax and any
// other "$" in the text are left alone. document$ re-runs this after
// mkdocs-material's instant navigation.
document$.subscribe(({ body }) => {
  body.querySelectorAll(".arithmatex").forEach((el) => {
    renderMathInElement(el, {
      delimiters: [
        { left: "\\(", right: "\\)", display: false },
        { left: "\\[", right: "\\]", display: true },
      ],
      throwOnError: false,
    });
  });
});
