"use strict";
document.querySelectorAll("section.attribute").forEach(function (sec) {
  var slider = sec.querySelector("input.strength");
  if (!slider) { return; }
  var label = sec.querySelector("output.strength-value");
  var strengths = slider.getAttribute("data-strengths").split(",");
  var marker = sec.querySelector("line.marker");
  function show(f) {
    f = String(f);
    sec.querySelectorAll("[data-f]").forEach(function (el) { el.hidden = el.getAttribute("data-f") !== f; });
    sec.querySelectorAll(".strip img").forEach(function (el) { el.classList.toggle("current", el.getAttribute("data-frame") === f); });
    if (marker) {
      var x = marker.getAttribute("data-xs").split(",")[Number(f)];
      marker.setAttribute("x1", x); marker.setAttribute("x2", x);
    }
    label.textContent = "strength " + strengths[Number(f)];
  }
  slider.addEventListener("input", function () { show(slider.value); });
  sec.querySelectorAll(".strip img").forEach(function (el) {
    el.addEventListener("click", function () { slider.value = el.getAttribute("data-frame"); show(slider.value); });
  });
  show(slider.value);
});
document.querySelectorAll("button.copy").forEach(function (b) {
  b.addEventListener("click", function () {
    var t = document.getElementById(b.getAttribute("data-target"));
    t.select();
    if (navigator.clipboard) { navigator.clipboard.writeText(t.value).catch(function () {}); }
  });
});
