// Runs in <head>, before the first paint: the remembered theme, dark unless the user chose light.
(function () {
  "use strict";
  try {
    var theme = window.localStorage.getItem("xrv.theme");
    if (theme === "light" || theme === "dark") {
      document.documentElement.setAttribute("data-theme", theme);
    }
  } catch (err) {
    // Storage blocked: stay dark.
  }
})();
